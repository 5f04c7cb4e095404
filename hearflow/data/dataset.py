"""A torch Dataset over a prepared folder: image, flow, spectrogram and id per sample.

Every tensor is made by `hearflow.data.transforms.sample_tensors`, the recipe that
localize uses too; this file only reads samples and seeds the random crop/flip of
training.

Training augmentations are drawn from a generator seeded by ``(seed, epoch, index)``,
not from the worker process: the same sample gets the same crop and flip in a given
epoch whatever the number of loader workers or training processes, so a run is
reproducible, a resumed run continues exactly, and N processes see what one sees.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from hearflow.config import Config
from hearflow.data.device_inputs import encoded_item, read_encoded
from hearflow.data.prepared import PreparedFolder
from hearflow.data.shards import PreparedShards, open_prepared
from hearflow.data.transforms import sample_tensors
from hearflow.errors import HearflowError, option


class PreparedDataset(Dataset):
    """Samples of a prepared folder (hearflow's or the released layout) as model inputs.

    folder: a prepared folder or shards (a path, `PreparedFolder` or `PreparedShards`); config: the run's Config
    (its ``data`` section drives every transform); train: random crop + flip
    (else the test resize); ids: the samples to use, in order (default: all of the
    folder's). Ids the folder does not hold, and samples whose files are missing or
    damaged (empty or cut short: `PreparedFolder.file_problems`, checked here without
    decoding), are a HearflowError, or with ``skip_missing=True`` left out and listed
    in ``self.skipped`` as ``(id, reason)``. Reading decodes strictly as well: a file
    damaged in a way no header shows is a HearflowError naming the sample and file.

    ``dataset[i]`` is ``{"image": 3 x S x S, "flow": 2 x S x S, "spectrogram":
    1 x F x T (float32 tensors), "id": str}``; with ``encoded=True`` (training with
    ``train.gpu_inputs``) it is `hearflow.data.device_inputs.encoded_item`'s bytes and
    crop instead, which `device_inputs` turns into the same tensors on the device.
    """

    def __init__(
        self,
        folder: str | Path | PreparedFolder,
        config: Config,
        train: bool,
        ids: Iterable[str] | None = None,
        skip_missing: bool = False,
        encoded: bool = False,
    ) -> None:
        self.folder = folder if isinstance(folder, (PreparedFolder, PreparedShards)) else open_prepared(folder)
        self.data_config = config.data
        self.train = train
        self.encoded = encoded
        if encoded and not train:
            raise HearflowError("encoded items (train.gpu_inputs) are for training; evaluation uses the test transform")
        if encoded and self.folder.layout == "released":
            raise HearflowError(f"{self.folder.path} is in the released layout; train.gpu_inputs reads folders made "
                                "by `hearflow prepare` and shards made by `hearflow pack`")
        self.seed = config.train.seed
        self.epoch = 0
        if self.folder.layout == "released" and self.data_config.flow_encoding == "signed":
            raise HearflowError(
                f"{self.folder.path} is in the released layout, whose flow is 8-bit JPEG clipped to "
                "[0, 255]: it cannot give signed flow. Use data.flow_encoding 'official' "
                "(e.g. --preset htf-released, or --set data.flow_encoding=official)"
            )
        self.ids, self.skipped = self._select(list(self.folder.ids if ids is None else ids), skip_missing)
        if not self.ids:
            raise HearflowError(f"no usable samples in {self.folder.path}")

    def _select(self, wanted: list[str], skip_missing: bool) -> tuple[list[str], list[tuple[str, str]]]:
        """Keep the ids whose files exist; the others raise or go to ``skipped`` with a reason."""
        held = set(self.folder.ids)
        kept, skipped = [], []
        for sample_id in wanted:
            if sample_id not in held:
                reason = "not in the folder's manifest"
            else:
                reason = "; ".join(self.folder.file_problems(sample_id))
            if not reason:
                kept.append(sample_id)
            elif skip_missing:
                skipped.append((sample_id, reason))
            else:
                raise HearflowError(
                    f"sample {sample_id!r} of {self.folder.path}: {reason} (rerun `hearflow prepare`, which redoes "
                    f"samples whose files are missing or damaged, or pass {option('--skip-missing', 'skip_missing=True')} "
                    "to leave such samples out)"
                )
        return kept, skipped

    def left_out_line(self, label: str) -> str | None:
        """One line naming how many ``label`` samples were left out and why (examples), or None."""
        if not self.skipped:
            return None
        examples = "; ".join(f"{sample_id}: {reason}" for sample_id, reason in self.skipped[:3])
        return (f"left out {len(self.skipped)} of {len(self.ids) + len(self.skipped)} {label} samples with missing "
                f"or damaged files (e.g. {examples})")

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose augmentations ``__getitem__`` draws (training only)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        sample_id = self.ids[index]
        rng = np.random.default_rng([self.seed, self.epoch, index]) if self.train else None
        if self.encoded:
            return encoded_item(read_encoded(self.folder, sample_id), self.data_config, rng)
        sample = self.folder.read(sample_id)
        tensors = sample_tensors(sample.frame, sample.flow, sample.audio, sample.sample_rate, self.data_config,
                                 train=self.train, rng=rng)
        return {**tensors, "id": sample_id}
