"""The sharded layout: prepared samples in WebDataset-style tar files, with an index.

What `hearflow pack` writes::

    OUT/shards.json              the format, the recipe (the folder's prepare.json), the
                                 frames' JPEG quality and the flow's quantisation step
    OUT/shard-000000.tar ...     samples, each four consecutive members named by its key:
        {key}.jpg                the key frame, the folder's JPEG as it is (quality in shards.json)
        {key}.flow.png           the flow as a 16-bit PNG, zlib level 9 (`hearflow.data.codecs`)
        {key}.flac               the audio window, the WAV's 16-bit PCM as FLAC (lossless)
        {key}.json               the sample's manifest row, with its id
    OUT/index.csv                one row per sample: id, shard, offset and size of its
                                 members in the tar, then the manifest columns

A pack run with ``--shard I/N`` writes ``shard-I-of-N-000000.tar ...`` and
``index.shard-I-of-N.csv`` instead, so runs can share one OUT; readers take the union
of all indexes. A tar holds ordinary files (``tar -xf`` extracts them, the
``webdataset`` library reads the samples); the key is the id, with characters other
than letters, digits, ``-`` and ``_`` percent-encoded (WebDataset splits names at the
first dot). An index is written last, once its shards are complete: samples exist only
through it.

`PreparedShards` reads this layout with the interface of
`hearflow.data.prepared.PreparedFolder` (``ids``, ``rows``, ``recipe``, ``read``,
``missing_files``); `open_prepared` opens either. Reads use ``os.pread`` on files
opened once per process, so loader workers share nothing and a worker reading its
samples in index order reads each shard front to back.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from hearflow.data.codecs import decode_flac, decode_flow
from hearflow.data.prepared import MANIFEST_COLUMNS, PreparedFolder, PreparedSample
from hearflow.errors import HearflowError
from hearflow.io import atomic_file

FORMAT = "hearflow-shards"
VERSION = 1
HEADER_NAME = "shards.json"
INDEX_COLUMNS = ("id", "shard", "offset", "size") + tuple(c for c in MANIFEST_COLUMNS if c != "id")
MEMBERS = ("jpg", "flow.png", "flac", "json")  # per sample, in this order
_KEY_SAFE = re.compile(r"[A-Za-z0-9_-]")


def sample_key(sample_id: str) -> str:
    """The WebDataset key of an id: the id, with every character but ``[A-Za-z0-9_-]``
    percent-encoded (UTF-8), so keys hold no dot or slash and stay unique."""
    return "".join(ch if _KEY_SAFE.fullmatch(ch) else "".join(f"%{b:02X}" for b in ch.encode()) for ch in sample_id)


def shard_prefix(part: tuple[int, int] | None) -> str:
    return "shard-" if part is None else f"shard-{part[0]}-of-{part[1]}-"


def index_name(part: tuple[int, int] | None) -> str:
    return "index.csv" if part is None else f"index.shard-{part[0]}-of-{part[1]}.csv"


def is_shards(path: str | Path) -> bool:
    return (Path(path) / HEADER_NAME).is_file()


def open_prepared(path: str | Path) -> "PreparedFolder | PreparedShards":
    """The prepared data at ``path``: shards (``shards.json``) or a prepared folder."""
    return PreparedShards(path) if is_shards(path) else PreparedFolder(path)


@dataclass(frozen=True)
class Location:
    """Where one sample's members lie: ``size`` bytes from ``offset`` in shard file ``shard``."""

    shard: str
    offset: int
    size: int


class PreparedShards:
    """A sharded dataset (`hearflow pack`) read like a `PreparedFolder`.

    ``ids`` sorted; ``rows[id]`` its manifest row; ``recipe`` the folder's
    prepare.json; ``header`` shards.json; ``locations[id]`` where its members are;
    ``shards`` the shard file names, sorted.
    """

    layout = "shards"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        header_path = self.path / HEADER_NAME
        try:
            self.header = json.loads(header_path.read_text())
        except (OSError, ValueError) as error:
            raise HearflowError(f"{header_path} is unreadable ({error})") from None
        if self.header.get("format") != FORMAT or self.header.get("version") != VERSION:
            raise HearflowError(f"{header_path} is not a {FORMAT} version {VERSION} header")
        self.recipe = dict(self.header.get("recipe", {}))
        self.rows: dict[str, dict] = {}
        self.locations: dict[str, Location] = {}
        indexes = sorted(self.path.glob("index*.csv"))
        if not indexes:
            raise HearflowError(f"{self.path} has {HEADER_NAME} but no index*.csv: its pack run did not finish")
        for index in indexes:
            for row in _index_rows(index):
                if row["id"] in self.rows:
                    continue
                try:
                    self.locations[row["id"]] = Location(row["shard"], int(row["offset"]), int(row["size"]))
                except (KeyError, ValueError):
                    raise HearflowError(f"{index}: a damaged row for sample {row.get('id')!r}") from None
                self.rows[row["id"]] = {column: row.get(column, "") for column in MANIFEST_COLUMNS}
        self.ids = sorted(self.rows)
        self.shards = sorted({location.shard for location in self.locations.values()})
        self._files: dict[str, int] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.ids)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_files": {}}  # descriptors are per process

    def shard_path(self, shard: str) -> Path:
        return self.path / shard

    def missing_files(self, sample_id: str) -> list[Path]:
        """The shard file of ``sample_id`` when it does not exist (else empty)."""
        path = self.shard_path(self.locations[sample_id].shard)
        return [] if path.is_file() else [path]

    def file_problems(self, sample_id: str) -> list[str]:
        """What is wrong with the files of ``sample_id``, one line each (as `PreparedFolder.file_problems`):
        its shard missing, or shorter than the index says the sample reaches."""
        location = self.locations[sample_id]
        path = self.shard_path(location.shard)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return [f"missing {path}"]
        end = location.offset + location.size
        return [] if size >= end else [f"{path} is truncated ({size} bytes; the index places the sample up to {end})"]

    def read_span(self, location: Location) -> bytes:
        """The raw tar bytes of one sample (its four members with their headers)."""
        if self._pid != os.getpid():
            self._files, self._pid = {}, os.getpid()
        descriptor = self._files.get(location.shard)
        path = self.shard_path(location.shard)
        if descriptor is None:
            try:
                descriptor = self._files[location.shard] = os.open(path, os.O_RDONLY)
            except OSError as error:
                raise HearflowError(f"cannot open shard {path}: {error.strerror}") from None
        data = os.pread(descriptor, location.size, location.offset)
        if len(data) != location.size:
            raise HearflowError(f"{path} is shorter than its index says (truncated copy?)")
        return data

    def read_members(self, sample_id: str) -> dict[str, bytes]:
        """``{"jpg", "flow.png", "flac", "json"}`` -> bytes of one sample."""
        if sample_id not in self.locations:
            raise HearflowError(f"sample {sample_id!r} is not in {self.path}")
        return members_of(self.read_span(self.locations[sample_id]), sample_id, self.locations[sample_id].shard)

    def read(self, sample_id: str) -> PreparedSample:
        """Load one sample: the same arrays `PreparedFolder.read` gives for the folder it was packed from."""
        return decode_members(self.read_members(sample_id), sample_id)


def members_of(span: bytes, sample_id: str, shard: str) -> dict[str, bytes]:
    """The members of one sample's tar bytes, by extension; HearflowError when one is missing."""
    key = sample_key(sample_id)
    try:
        found = _ustar_members(span)
        if found is None:  # PAX or GNU headers (long names): the general reader
            with tarfile.open(fileobj=io.BytesIO(span), mode="r:") as archive:
                found = [(info.name, archive.extractfile(info).read()) for info in archive if info.isfile()]
    except (tarfile.TarError, ValueError) as error:
        raise HearflowError(f"sample {sample_id!r} in {shard}: damaged tar data ({error})") from None
    members = {}
    for name, data in found:
        stem, _, extension = name.rsplit("/", 1)[-1].partition(".")
        if stem == key:
            members[extension] = data
    missing = [extension for extension in MEMBERS if extension not in members]
    if missing:
        raise HearflowError(f"sample {sample_id!r} in {shard} lacks {', '.join(key + '.' + m for m in missing)}")
    return members


def _ustar_members(span: bytes) -> list[tuple[str, bytes]] | None:
    """(name, data) of the regular files in tar bytes whose headers are all plain ustar ones
    (what `ShardWriter` writes for short names), or None when another kind appears."""
    found, position = [], 0
    while position + 512 <= len(span):
        header = span[position : position + 512]
        if header == bytes(512):
            break
        if header[156:157] not in (b"0", b"\0") or header[257:262] != b"ustar":
            return None
        size = int(header[124:136].strip(b"\0 ") or b"0", 8)
        name = header[0:100].split(b"\0", 1)[0].decode("utf-8")
        prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8")
        start = position + 512
        if start + size > len(span):
            raise ValueError("a member runs past the end of the sample's bytes")
        found.append((f"{prefix}/{name}" if prefix else name, span[start : start + size]))
        position = start + (size + 511) // 512 * 512
    return found


def decode_members(members: dict[str, bytes], sample_id: str) -> PreparedSample:
    """A `PreparedSample` from a sample's members (frame RGB uint8, flow float32, audio float32)."""
    frame = cv2.imdecode(np.frombuffer(members["jpg"], np.uint8), cv2.IMREAD_COLOR_RGB)
    if frame is None:
        raise HearflowError(f"sample {sample_id!r}: its .jpg member is not a readable JPEG")
    try:
        flow = decode_flow(members["flow.png"])
        audio, sample_rate = decode_flac(members["flac"])
    except HearflowError as error:
        raise HearflowError(f"sample {sample_id!r}: {error}") from None
    return PreparedSample(sample_id, frame, flow, audio, sample_rate)


def _index_rows(path: Path) -> list[dict]:
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, csv.Error, UnicodeDecodeError) as error:
        raise HearflowError(f"{path} is unreadable ({error})") from None
    if rows and not {"id", "shard", "offset", "size"} <= set(rows[0]):
        raise HearflowError(f"{path} is not a hearflow shard index (its columns are {list(rows[0])})")
    return rows


class ShardWriter:
    """Writes one tar shard atomically: `add` appends a sample's members, `close` makes the
    file appear under its name (a killed run leaves only a ``*.tmp-<pid>`` file)."""

    def __init__(self, path: Path, mtime: int) -> None:
        self.path, self.mtime = path, mtime
        self._context = atomic_file(path)
        self._handle = self._context.__enter__()
        self._tar = tarfile.open(fileobj=self._handle, mode="w:", format=tarfile.PAX_FORMAT)

    @property
    def size(self) -> int:
        return self._tar.offset

    def add(self, sample_id: str, members: dict[str, bytes]) -> Location:
        """Append ``members`` (`MEMBERS` -> bytes) as ``{key}.{ext}``; returns where they lie."""
        start, key = self._tar.offset, sample_key(sample_id)
        for extension in MEMBERS:
            info = tarfile.TarInfo(f"{key}.{extension}")
            info.size, info.mtime, info.mode = len(members[extension]), self.mtime, 0o644
            self._tar.addfile(info, io.BytesIO(members[extension]))
        return Location(self.path.name, start, self._tar.offset - start)

    def close(self) -> None:
        self._tar.close()
        self._context.__exit__(None, None, None)

    def abort(self, error: BaseException) -> None:
        self._tar.close()
        self._context.__exit__(type(error), error, error.__traceback__)
