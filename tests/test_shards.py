"""hearflow pack and the sharded layout: tar files of ordinary members, an index, the folder's samples exactly."""

from __future__ import annotations

import json
import subprocess
import tarfile

import numpy as np
import pytest
import torch
from fixtures_train import small_config, synth_set  # noqa: F401

from hearflow.checkpoint import save_checkpoint
from hearflow.cli import main
from hearflow.data.codecs import recompress_flow
from hearflow.data.dataset import PreparedDataset
from hearflow.data.lists import parse_shard
from hearflow.data.prepared import PreparedFolder
from hearflow.data.shards import PreparedShards, open_prepared, sample_key
from hearflow.errors import HearflowError
from hearflow.evaluate import evaluate
from hearflow.model import build_model
from hearflow.pack import pack, parse_size



@pytest.fixture(scope="module")
def shards(synth_set, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "packed"
    summary = pack(synth_set.prepared, out, shard_size="200KB", progress=False)
    assert summary.samples == 16 and summary.shards > 2, summary.line()
    return out


def test_shards_read_exactly_the_folders_samples(synth_set, shards):
    folder, packed = PreparedFolder(synth_set.prepared), open_prepared(shards)
    assert isinstance(packed, PreparedShards) and packed.layout == "shards"
    assert packed.ids == folder.ids and packed.recipe == folder.recipe
    assert packed.rows == folder.rows
    for sample_id in folder.ids:
        a, b = folder.read(sample_id), packed.read(sample_id)
        assert np.array_equal(a.frame, b.frame) and np.array_equal(a.flow, b.flow)
        assert np.array_equal(a.audio, b.audio) and a.sample_rate == b.sample_rate
    header = json.loads((shards / "shards.json").read_text())
    assert header["jpeg_quality"] == 95 and header["flow"] == {"encoding": "png16", "step": 1 / 32}


def test_a_shard_is_a_tar_of_ordinary_files(synth_set, shards, tmp_path):
    first = sorted(shards.glob("shard-*.tar"))[0]
    names = subprocess.run(["tar", "-tf", str(first)], check=True, capture_output=True, text=True).stdout.split()
    keys = list(dict.fromkeys(name.split(".")[0] for name in names))
    assert names == [f"{key}.{ext}" for key in keys for ext in ("jpg", "flow.png", "flac", "json")]
    subprocess.run(["tar", "-xf", str(first), "-C", str(tmp_path)], check=True)
    for key in keys:
        assert (tmp_path / f"{key}.jpg").read_bytes() == (synth_set.prepared / "frames" / f"{key}.jpg").read_bytes()
        # The flow's levels and step as prepared, re-encoded at zlib's strongest level.
        packed_flow = (tmp_path / f"{key}.flow.png").read_bytes()
        prepared_flow = (synth_set.prepared / "flow" / f"{key}.png").read_bytes()
        assert packed_flow == recompress_flow(prepared_flow)
        assert len(packed_flow) <= len(prepared_flow)
        assert json.loads((tmp_path / f"{key}.json").read_text())["id"] == key
    assert (tmp_path / f"{keys[0]}.flac").read_bytes()[:4] == b"fLaC"


def test_the_webdataset_library_reads_the_shards(synth_set, shards):
    import webdataset  # the test extra installs it
    urls = [str(path) for path in sorted(shards.glob("shard-*.tar"))]
    seen = {}
    for sample in webdataset.WebDataset(urls, shardshuffle=False, empty_check=False):
        seen[json.loads(sample["json"])["id"]] = sample
        assert {"jpg", "flow.png", "flac", "json"} <= set(sample)
    assert sorted(seen) == PreparedFolder(synth_set.prepared).ids
    some = sorted(seen)[4]
    assert seen[some]["jpg"] == (synth_set.prepared / "frames" / f"{some}.jpg").read_bytes()


def test_parts_packed_side_by_side_make_the_whole(synth_set, shards, tmp_path):
    out = tmp_path / "parts"
    for index in range(3):
        assert main(["pack", str(synth_set.prepared), str(out), "--shard", f"{index}/3", "--quiet"]) == 0
    assert sorted(p.name for p in out.glob("index*.csv")) == [f"index.shard-{i}-of-3.csv" for i in range(3)]
    parts, whole = PreparedShards(out), PreparedShards(shards)
    assert parts.ids == whole.ids
    assert all(np.array_equal(parts.read(i).flow, whole.read(i).flow) for i in parts.ids)
    # A rerun of one part replaces its shards; the other parts are untouched.
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-1-of-3-*.tar")}
    assert main(["pack", str(synth_set.prepared), str(out), "--shard", "0/3", "--quiet"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-1-of-3-*.tar")} == before
    assert PreparedShards(out).ids == whole.ids


def test_train_and_evaluate_read_shards_as_they_read_the_folder(synth_set, shards, tmp_path, capsys):
    config = small_config()
    from_folder = PreparedDataset(synth_set.prepared, config, train=False)
    from_shards = PreparedDataset(shards, config, train=False)
    for index in (0, 7):
        a, b = from_folder[index], from_shards[index]
        assert a["id"] == b["id"] and all(torch.equal(a[k], b[k]) for k in ("image", "flow", "spectrogram"))
    torch.manual_seed(0)
    checkpoint = tmp_path / "model.pt"
    save_checkpoint(checkpoint, build_model(config=config))
    results = [evaluate(checkpoint, data, synth_set.annotations, workers=0, progress=False)
               for data in (synth_set.prepared, shards)]
    assert {k: v for k, v in results[0].items() if k != "data"} == {k: v for k, v in results[1].items() if k != "data"}
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(shards), "--annotations",
                 str(synth_set.annotations), "--workers", "2", "--quiet"]) == 0


def test_pack_refusals_name_the_problem(synth_set, shards, tmp_path):
    with pytest.raises(HearflowError, match="holds shards of other data"):
        other = synth_set.copy_prepared(tmp_path / "other")
        recipe = json.loads((other / "prepare.json").read_text())
        (other / "prepare.json").write_text(json.dumps({**recipe, "flow_pairs": 2}))
        pack(other, shards, progress=False)
    damaged = synth_set.copy_prepared(tmp_path / "damaged")
    sample_id = PreparedFolder(damaged).ids[5]
    (damaged / "audio" / f"{sample_id}.wav").unlink()
    assert main(["pack", str(damaged), str(tmp_path / "out"), "--quiet"]) == 1
    assert not (tmp_path / "out" / "index.csv").exists() and not list((tmp_path / "out").glob("*.tar"))
    with pytest.raises(HearflowError, match="no index"):
        PreparedShards(tmp_path / "out")
    broken = synth_set.copy_prepared(tmp_path / "broken")
    flow = broken / "flow" / f"{PreparedFolder(broken).ids[3]}.png"
    flow.write_bytes(flow.read_bytes()[: flow.stat().st_size // 2])
    with pytest.raises(HearflowError, match=f"{flow.name}.*damaged.*rerun `hearflow prepare`"):
        pack(broken, tmp_path / "out-broken", progress=False)
    truncated = tmp_path / "truncated"
    pack(synth_set.prepared, truncated, progress=False)
    tar = next(truncated.glob("*.tar"))
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    with pytest.raises(HearflowError, match="shorter than its index"):
        PreparedShards(truncated).read(PreparedShards(truncated).ids[-1])


def test_keys_are_safe_and_unique():
    assert sample_key("abc_000010") == "abc_000010" and sample_key("-x9") == "-x9"
    assert sample_key("a.b/c") == "a%2Eb%2Fc" and sample_key("a%2Eb") == "a%252Eb" and sample_key("é") == "%C3%A9"
    assert "." not in sample_key("v.1.mp4")


def test_sizes_and_slurm_array_shards():
    assert parse_size("1GB") == 10**9 and parse_size("512MiB") == 2**29 and parse_size("2e9") == 2 * 10**9
    assert parse_size("1.5 kb") == 1500 and parse_size(4096) == 4096
    for bad in ("", "GB", "1 parsec", "-1GB", "0"):
        with pytest.raises(HearflowError, match="--shard-size"):
            parse_size(bad)
    env = {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "8", "SLURM_ARRAY_TASK_MIN": "0"}
    assert parse_shard("auto", env) == (5, 8)
    assert parse_shard("auto", {**env, "SLURM_ARRAY_TASK_ID": "11", "SLURM_ARRAY_TASK_MIN": "1",
                                "SLURM_ARRAY_TASK_STEP": "2"}) == (5, 8)
    with pytest.raises(HearflowError, match="sbatch --array"):
        parse_shard("auto", {})
    with pytest.raises(HearflowError, match="not one of 8 tasks"):
        parse_shard("auto", {**env, "SLURM_ARRAY_TASK_ID": "9"})
    assert parse_shard("2/4", {}) == (2, 4)


def test_shards_tar_members_are_plain_files(shards):
    with tarfile.open(next(shards.glob("*.tar"))) as archive:
        infos = archive.getmembers()
    assert all(info.isfile() and info.mode == 0o644 and "/" not in info.name for info in infos)


def test_long_ids_take_the_general_tar_reader(synth_set, tmp_path):
    """An id too long for a ustar name gets a PAX header; both readers give the same members."""
    from hearflow.data.shards import ShardWriter, members_of

    long_id = "x" * 150
    members = {"jpg": b"\xff\xd8jpeg", "flow.png": b"png", "flac": b"fLaC", "json": b"{}"}
    writer = ShardWriter(tmp_path / "shard-000000.tar", mtime=0)
    short = writer.add("short", members)
    long = writer.add(long_id, members)
    writer.close()
    span = (tmp_path / "shard-000000.tar").read_bytes()
    assert members_of(span[short.offset : short.offset + short.size], "short", "s") == members
    assert members_of(span[long.offset : long.offset + long.size], long_id, "s") == members
    with pytest.raises(HearflowError, match="lacks"):
        members_of(span[short.offset : short.offset + short.size], long_id, "s")


def test_a_folder_of_an_earlier_version_packs_with_its_flow_quantised(synth_set, tmp_path):
    legacy = synth_set.copy_prepared(tmp_path / "legacy")
    current = PreparedFolder(synth_set.prepared)
    for sample_id in current.ids:
        np.save(legacy / "flow" / f"{sample_id}.npy", current.read(sample_id).flow.astype(np.float16))
        (legacy / "flow" / f"{sample_id}.png").unlink()
    pack(legacy, tmp_path / "shards", progress=False)
    old, packed = PreparedFolder(legacy), PreparedShards(tmp_path / "shards")
    for sample_id in old.ids[:4]:
        a, b = old.read(sample_id), packed.read(sample_id)
        assert np.array_equal(a.frame, b.frame) and np.array_equal(a.audio, b.audio)
        assert np.abs(a.flow - b.flow).max() <= 1 / 64
