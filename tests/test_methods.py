"""The field's methods: each loss against a slow restatement of its paper's equations (values and
gradients), FNAC's warm-up, the EMA rule, a few training steps of every preset with and without the
flow prior, and SLAVC's exact resume (its momentum encoders in the checkpoint)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from fixtures_train import synth_set  # noqa: F401
from hearflow.checkpoint import load_checkpoint
from hearflow.config import PRESETS, preset_config
from hearflow.model import build_model
from hearflow.model.heads import ema_update
from hearflow.objective import LOSSES, ezvsl_loss, fnac_terms, global_batch_loss, slavc_logits, slavc_loss
from hearflow.synthetic.presets import DEMO_PRESETS
from hearflow.train import train

METHODS = ("ezvsl", "fnac", "slavc")
# cpu-small's sizes under every method's own fields
SMALL = {key: value for key, value in DEMO_PRESETS["cpu-small"].items()
         if key not in ("model.vision_frozen", "train.epochs")}


def method_config(name: str, **overrides):
    return preset_config(name, **{**SMALL, "model.projection": 32, "train.batch_size": 4, "train.epochs": 1,
                                  "train.workers": 0, **overrides})


def random_maps(batch: int, seed: int, cells: int = 5) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, batch, cells, cells, generator=generator, dtype=torch.float64) * 2 - 1).requires_grad_()


def cross_entropy_of_rows(logits: list[list[torch.Tensor]], target_of_row) -> torch.Tensor:
    """-1/R sum_r log(exp(l_r,target) / sum_c exp(l_rc)), one row at a time."""
    total = 0
    for row, values in enumerate(logits):
        total = total - (values[target_of_row(row)] - torch.log(sum(torch.exp(v) for v in values)))
    return total / len(logits)


def ezvsl_restated(maps: torch.Tensor, tau: float) -> torch.Tensor:
    batch = maps.shape[0]
    logits = [[maps[i, j].max() / tau for j in range(batch)] for i in range(batch)]
    transposed = [[logits[i][j] for i in range(batch)] for j in range(batch)]
    return cross_entropy_of_rows(logits, lambda row: row) + cross_entropy_of_rows(transposed, lambda row: row)


def assert_same_value_and_gradient(fast, slow, inputs):
    assert fast.item() == pytest.approx(slow.item(), rel=1e-9, abs=1e-12)
    fast_grads = torch.autograd.grad(fast, inputs, retain_graph=True)
    slow_grads = torch.autograd.grad(slow, inputs, retain_graph=True)
    for one, two in zip(fast_grads, slow_grads):
        torch.testing.assert_close(one.double(), two, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("batch, tau", [(2, 0.03), (5, 0.03), (4, 0.5)])
def test_ezvsl_loss_is_the_two_way_max_mil_infonce(batch, tau):
    maps = random_maps(batch, batch)
    fast = ezvsl_loss(maps, tau)
    assert_same_value_and_gradient(fast, ezvsl_restated(maps, tau), [maps])
    assert not math.isclose(fast.item(), ezvsl_loss(maps, tau * 2).item())


def softmax_row(values: list[torch.Tensor]) -> list[torch.Tensor]:
    total = sum(torch.exp(v) for v in values)
    return [torch.exp(v) / total for v in values]


def l1_of_row_softmaxes(first, second) -> torch.Tensor:
    batch = len(first)
    total = 0
    for row in range(batch):
        total = total + sum(abs(p - q) for p, q in zip(softmax_row(first[row]), softmax_row(second[row])))
    return total / batch**2


def fnac_restated(visual, audio, tau, threshold):
    """FNAC's three terms from per-sample sums (its paper's Eq. with the released code's choices)."""
    batch, _, height, width = visual.shape
    cells = [(y, x) for y in range(height) for x in range(width)]
    cosine = lambda i, j, y, x: (visual[i, :, y, x] * audio[j]).sum()  # noqa: E731
    logits = [[max(cosine(i, j, y, x) for y, x in cells) / tau for j in range(batch)] for i in range(batch)]
    audio_audio = [[(audio[i] * audio[j]).sum() / tau for j in range(batch)] for i in range(batch)]
    pooled = [sum(visual[i, :, y, x] for y, x in cells) / len(cells) for i in range(batch)]
    image_image = [[(pooled[i] * pooled[j]).sum() / tau for j in range(batch)] for i in range(batch)]
    foreground = []
    for i in range(batch):
        own = {(y, x): cosine(i, i, y, x).item() / tau for y, x in cells}
        low, high = min(own.values()), max(own.values())
        chosen = [(y, x) for y, x in cells if (own[y, x] - low) / (high - low + 1e-5) > threshold]
        foreground.append(sum((visual[i, :, y, x] for y, x in chosen), torch.zeros_like(audio[0])) / len(cells))
    fg = [[(foreground[i] * foreground[j]).sum() / tau for j in range(batch)] for i in range(batch)]
    return (l1_of_row_softmaxes(audio_audio, logits), l1_of_row_softmaxes(audio_audio, fg),
            l1_of_row_softmaxes(image_image, logits))


@pytest.mark.parametrize("batch, threshold", [(3, 0.6), (4, 0.3)])
def test_fnac_terms_are_its_three_l1_distances_of_row_softmaxes(batch, threshold):
    generator = torch.Generator().manual_seed(batch)
    visual = F.normalize(torch.randn(batch, 6, 3, 3, generator=generator, dtype=torch.float64), dim=1)
    audio = F.normalize(torch.randn(batch, 6, generator=generator, dtype=torch.float64), dim=1)
    visual.requires_grad_(), audio.requires_grad_()
    cross = torch.einsum("ichw,jc->ijhw", visual, audio)
    fast = fnac_terms(visual, audio, cross, 0.07, threshold)
    slow = fnac_restated(visual, audio, 0.07, threshold)
    for one, two in zip(fast, slow):
        assert one.item() > 0
        assert_same_value_and_gradient(one, two, [visual, audio])


def slavc_restated(first, second, tau):
    """log sum_p [softmax over audios of first / tau] [softmax over positions of second / tau]."""
    batch, _, height, width = first.shape
    cells = [(y, x) for y in range(height) for x in range(width)]
    rows = []
    for n in range(batch):
        row = []
        for m in range(batch):
            total = 0
            for y, x in cells:
                over_audio = torch.exp(first[n, m, y, x] / tau) / sum(torch.exp(first[n, k, y, x] / tau)
                                                                      for k in range(batch))
                over_cells = torch.exp(second[n, m, y, x] / tau) / sum(torch.exp(second[n, m, b, a] / tau)
                                                                       for b, a in cells)
                total = total + over_audio * over_cells
            row.append(torch.log(total))
        rows.append(row)
    return rows


@pytest.mark.parametrize("batch, tau", [(2, 0.03), (4, 0.1)])
def test_slavc_loss_is_its_two_head_product_of_softmaxes_both_ways(batch, tau):
    first, second, third, fourth = (random_maps(batch, seed, cells=3) for seed in range(4))
    image_to_audio, audio_to_image = slavc_logits(first, second, tau), slavc_logits(third, fourth, tau)
    fast = slavc_loss(image_to_audio, audio_to_image)
    slow = (cross_entropy_of_rows(slavc_restated(third, fourth, tau), lambda row: row)
            + cross_entropy_of_rows(slavc_restated(first, second, tau), lambda row: row))
    assert_same_value_and_gradient(fast, slow, [first, second, third, fourth])


def test_the_registered_slavc_loss_pairs_online_heads_with_momentum_targets():
    torch.manual_seed(0)
    model = build_model(config=method_config("slavc", **{"model.dropout_image": 0.0})).double()
    batch = inputs(3)
    features = model.embed(*batch)
    assert features.momentum_visual.shape[:2] == (3, 2) and features.momentum_audio.shape == (3, 2, 32)
    tau = model.config.objective.temperature
    cosines = lambda v, a: torch.einsum("ichw,jc->ijhw", v, a)  # noqa: E731
    tv, ta = features.momentum_visual, features.momentum_audio
    expected = slavc_loss(slavc_logits(cosines(features.visual, ta[:, 0]), cosines(features.second_visual, ta[:, 1]),
                                       tau),
                          slavc_logits(cosines(tv[:, 0], features.audio), cosines(tv[:, 1], features.second_audio),
                                       tau))
    assert LOSSES["slavc"](features, model, model.config.objective, 1).item() == pytest.approx(expected.item())


def inputs(batch: int, seed: int = 0, size: int = 64):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 3, size, size, generator=generator, dtype=torch.float64),
            torch.randn(batch, 2, size, size, generator=generator, dtype=torch.float64),
            torch.randn(batch, 1, 64, 40, generator=generator, dtype=torch.float64))


def test_fnac_is_ezvsl_during_its_warm_up_and_adds_its_terms_after():
    torch.manual_seed(0)
    config = method_config("fnac", **{"model.dropout_image": 0.0})
    model = build_model(config=config).double().eval()
    features = model.embed(*inputs(4))
    objective = config.objective
    plain = ezvsl_loss(model.similarity(features).cross_similarity, objective.temperature)
    assert [LOSSES["fnac"](features, model, objective, epoch).item() for epoch in (1, 3)] == [plain.item()] * 2
    terms = fnac_terms(features.visual, features.audio, model.similarity(features).cross_similarity,
                       objective.temperature, objective.fnac_threshold)
    after = LOSSES["fnac"](features, model, objective, 4).item()
    assert after == pytest.approx(plain.item() + 100 * sum(term.item() for term in terms))


def test_ema_update_moves_each_parameter_a_fraction_of_the_way():
    online, momentum = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    with torch.no_grad():
        online.weight.fill_(3.0), momentum.weight.fill_(1.0), online.bias.fill_(-1.0), momentum.bias.fill_(1.0)
    ema_update(momentum, online, 0.9)
    assert momentum.weight.flatten().tolist() == pytest.approx([1.2, 1.2]) and momentum.bias.item() == pytest.approx(0.8)


def test_a_training_embed_is_one_ema_step_and_eval_maps_come_from_the_momentum_copies():
    torch.manual_seed(0)
    model = build_model(config=method_config("slavc", **{"model.momentum": 0.5}))
    with torch.no_grad():
        model.img_proj1.weight.add_(1.0)  # online and momentum differ by 1 everywhere
    before = model.momentum_img_proj1.weight.detach().clone()
    model.train().embed(*(x.float() for x in inputs(2)))
    torch.testing.assert_close(model.momentum_img_proj1.weight, before + 0.5)
    model.eval()
    image, flow, spectrogram = (x.float() for x in inputs(2, seed=1))
    features = model.embed(image, flow, spectrogram)
    assert features.momentum_visual is None
    with torch.no_grad():
        trunk = model.momentum_imgnet(image)
        expected = F.normalize(model.momentum_img_proj1(trunk), dim=1)
    torch.testing.assert_close(features.visual, expected)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("prior", [{"model.prior": "none"}, {"model.prior": "channel"}, {"model.prior": "spatial"},
                                   {"model.prior": "spatial", "model.prior_gate": True}])
def test_every_method_trains_a_few_steps_with_and_without_the_flow_prior(method, prior):
    torch.manual_seed(0)
    config = method_config(method, **prior, **({"objective.fnac_warmup": 0} if method == "fnac" else {}))
    model = build_model(config=config).train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    before = {name: value.detach().clone() for name, value in model.state_dict().items()}
    losses = []
    for step in range(3):
        batch = tuple(x.float() for x in inputs(4, seed=step % 2))
        loss = global_batch_loss(model.embed, model, batch, config.objective, epoch=1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(value) for value in losses)
    changed = {name.split(".")[0] for name, value in model.state_dict().items()
               if value.is_floating_point() and not torch.equal(value, before[name])}
    learned = {"imgnet", "audnet"} | {name for pair in model.heads for name in pair}
    if config.model.prior != "none":
        learned |= {"flowatt", "flownet"}
    assert learned <= changed
    if config.model.momentum:
        assert {f"momentum_{name}" for name in learned} <= changed


def test_method_presets_say_why_every_field_differs_from_htf():
    for name in METHODS:
        preset = PRESETS[name]
        assert set(preset.why) == set(preset.fields), name
        assert all(line.strip() for line in preset.why.values())
        assert preset_config(name).objective.loss == name


def test_slavc_resume_continues_exactly_with_its_momentum_encoders(synth_set, tmp_path):  # noqa: F811
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(synth_set.ids()[:8]) + "\n")
    config = method_config("slavc", **{"train.epochs": 2, "train.seed": 5})
    straight = train(config, synth_set.prepared, tmp_path / "straight", train_ids=ids, deterministic=True,
                     pretrained=False, progress=False)
    config.train.epochs = 1
    train(config, synth_set.prepared, tmp_path / "split", train_ids=ids, deterministic=True, pretrained=False,
          progress=False)
    first = load_checkpoint(tmp_path / "split" / "last.pt")["state_dict"]
    config.train.epochs = 2
    resumed = train(config, None, tmp_path / "split", resume=True, deterministic=True, progress=False)
    momentum = [name for name in straight.state_dict() if name.startswith("momentum_")]
    assert momentum and any(not torch.equal(first[name], straight.state_dict()[name]) for name in momentum)
    for name, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name


@pytest.mark.slow
def test_the_method_axis_runs_on_the_small_setting(tmp_path, monkeypatch):
    """A smoke test of the study's method rows on tiny data (not a result): SLAVC trained then blended
    with the synthetic trunk (OGL), EZ-VSL with the learned prior; the small setting's clips."""
    import functools

    import hearflow.synthetic.study as study
    from hearflow.synthetic.lab import SIZES, DemoSize

    monkeypatch.setitem(SIZES, "quick", DemoSize(train_clips=64, test_clips=8, epochs=1))
    monkeypatch.setattr(study, "make_pretrained_weights",
                        functools.partial(study.make_pretrained_weights, images_per_class=4, epochs=1))
    summary = study.run_study(tmp_path, rows=["slavc-ogl", "ezvsl-prior"], seeds=(0,), settings=["small"],
                              quick=True, workers=1, progress=False)
    runs = tmp_path / "small" / "data-seed0" / "runs"
    assert load_checkpoint(runs / "slavc" / "last.pt")["config"]["objective"]["loss"] == "slavc"
    prior = load_checkpoint(runs / "ezvsl-prior" / "last.pt")["config"]
    assert (prior["objective"]["loss"], prior["model"]["prior"], prior["model"]["projection"]) == ("ezvsl", "spatial", 128)
    for row in ("slavc-ogl", "ezvsl-prior"):
        entry = summary["small"][row]
        assert entry["seeds"] == [0] and 0 <= entry["mean_ciou"][0] <= 1 and entry["seconds"][0] > 0
    clips = json.loads((tmp_path / "small" / "data-seed0" / "synth" / "test" / "clips.json").read_text())
    areas = [(box[2] - box[0]) * (box[3] - box[1]) for clip in clips for box in
             (obj["box"] for obj in clip["objects"])]
    assert 0.04 < sum(areas) / len(areas) < 0.16  # about a tenth of the frame
    table = (tmp_path / "study.md").read_text()
    assert "s / run" in table and "| slavc-ogl: " in table and "| fnac: FNAC, no flow | not run" in table


@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_in_onnx_runtime_with_the_torch_maps(method):
    pytest.importorskip("onnxruntime")
    from hearflow.backends import example_inputs, make_backend

    torch.manual_seed(0)
    model = build_model(config=method_config(method, **{"model.prior": "channel"})).eval()
    batch = [torch.randn_like(x) for x in example_inputs(model.config, batch=2).values()]
    reference = make_backend("torch", model, torch.device("cpu")).maps(*batch)
    exported = make_backend("onnx", model, torch.device("cpu")).maps(*batch)
    torch.testing.assert_close(exported, reference, rtol=1e-4, atol=1e-5)


def test_a_checkpoint_written_before_the_methods_loads_as_the_model_it_was(tmp_path):
    from hearflow.checkpoint import load, save_checkpoint
    from hearflow.synthetic.presets import demo_config

    model = build_model(config=demo_config("cpu-small"))
    save_checkpoint(tmp_path / "new.pt", model)
    checkpoint = torch.load(tmp_path / "new.pt", weights_only=True)
    new_model = ("projection", "heads", "momentum", "momentum_eval", "dropout_image", "dropout_audio")
    for name in new_model:
        del checkpoint["config"]["model"][name]
    for name in [key for key in checkpoint["config"]["objective"] if key.startswith("fnac_")] + ["loss_batch"]:
        del checkpoint["config"]["objective"][name]
    torch.save(checkpoint, tmp_path / "old.pt")
    old = load(tmp_path / "old.pt")
    assert (old.config.model.projection, old.config.model.momentum, old.config.objective.loss_batch) == (0, 0.0, "global")
    for name, value in model.state_dict().items():
        assert torch.equal(value, old.state_dict()[name]), name
