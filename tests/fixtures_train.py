"""Fixtures of the train / evaluate / dataset tests: one small synthetic prepared set.

Import the fixtures into a test module with
``from fixtures_train import synth_set  # noqa: F401``.
The set is made once per session by `hearflow.synthetic.clips.synthesize` and
`hearflow.prepare.prepare` (real MP4 files through the real pipeline): 16 clips of
64 x 64 pixels, 2 s, a quarter of them without a visible sound source.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from hearflow.prepare import prepare
from hearflow.synthetic.clips import synthesize
from hearflow.synthetic.presets import demo_config

CLIPS = 16


@dataclass(frozen=True)
class SynthSet:
    root: Path
    prepared: Path  # a prepared folder in hearflow's layout
    annotations: Path  # VGG-SS-style JSON, one entry per clip

    def copy_prepared(self, destination: Path) -> Path:
        """A private copy of the prepared folder that a test may damage."""
        return Path(shutil.copytree(self.prepared, destination))

    def ids(self) -> list[str]:
        from hearflow.data.prepared import PreparedFolder

        return list(PreparedFolder(self.prepared).ids)


@pytest.fixture(scope="session")
def synth_set(tmp_path_factory) -> SynthSet:
    root = tmp_path_factory.mktemp("synth_train")
    synthesize(root, clips=CLIPS, seed=3, progress=False, seconds=2.0, width=64, height=64, no_source=0.25)
    summary = prepare(root / "videos", root / "prepared", demo_config("cpu-small").data, progress=False)
    assert summary.prepared == CLIPS, summary.line()
    return SynthSet(root, root / "prepared", root / "annotations.json")


def small_config(**overrides):
    """cpu-small with a batch of 4, one epoch, no loader workers, unless overridden."""
    fields = {"train.batch_size": 4, "train.epochs": 1, "train.workers": 0}
    fields.update(overrides)
    return demo_config("cpu-small", **fields)
