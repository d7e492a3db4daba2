"""Preference pairs on disk: written incrementally by pair generation, read by DPO as memory-mapped arrays.

A folder holds one stage's pairs:
    chosen.npy, rejected.npy       (capacity, max_len) token ids: prompt + response, right-padded with pad_id
    prompt_len.npy                 (capacity,)
    chosen_reward.npy, rejected_reward.npy          (capacity,) the scores that picked the pair
    chosen_ref_logp.npy, rejected_ref_logp.npy      (capacity,) optional: log p_ref(response | prompt), summed
    pairs.jsonl                    one human-readable record per pair (prompt, responses, scores, judge outputs)
    meta.json                      num_pairs committed, capacity, max_len, pad_id, complete, the fingerprint of
                                   what made the pairs, and the checksums below

`meta.json` is the commit point. An append writes rows past the committed ones and JSONL lines past the
committed bytes, flushes and fsyncs them, then advances `num_pairs`, `jsonl_bytes` and the SHA-256 of each
array's committed rows and of the committed JSONL bytes in one atomic rename of meta.json. So after a kill at
any moment, including during a resume's repair (which only cuts pairs.jsonl back to `jsonl_bytes`, a step that
can be repeated), the committed pairs are exactly those counted in meta.json. Every open checks the arrays'
shapes and the checksums of what is committed, and refuses a mismatch naming the file.

Space: the arrays are sparse files that grow as pairs arrive; the blocks of the next `GROW_ROWS` rows are reserved
for real (`integrity.allocate`) before rows are written, so a disk that fills is a `DiskFullError` naming the folder
and the bytes, never a SIGBUS from a write into a hole. Opening a writer checks that the disk has room for the rest.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import mmap
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from self_rewarding_lm_pytorch.storage.fingerprint import changed_parts
from self_rewarding_lm_pytorch.storage.integrity import (
    CorruptFileError,
    DiskFullError,
    allocate,
    atomic_write_json,
    check_free_space,
    content_digest,
    remove_stale_temp_files,
)

# the folder's layout, shared by the writer and the reader
META = "meta.json"
JSONL = "pairs.jsonl"
WAY_OUT = "delete the folder to generate its pairs again (or run with overwrite_checkpoints=True)"


@dataclass(frozen=True)
class ArraySpec:
    dtype: type
    per_token: bool  # a (capacity, max_len) row of tokens per pair, else one value per pair
    when: str | None = None  # the meta.json flag that says the folder stores it; None: always


# every array of a folder; a new per-pair column is one more row here
ARRAYS = {
    "chosen": ArraySpec(np.int64, per_token=True),
    "rejected": ArraySpec(np.int64, per_token=True),
    "prompt_len": ArraySpec(np.int64, per_token=False),
    "chosen_reward": ArraySpec(np.float32, per_token=False),
    "rejected_reward": ArraySpec(np.float32, per_token=False),
    "chosen_ref_logp": ArraySpec(np.float32, per_token=False, when="with_ref_logps"),
    "rejected_ref_logp": ArraySpec(np.float32, per_token=False, when="with_ref_logps"),
}
REF_ARRAYS = ("chosen_ref_logp", "rejected_ref_logp")


def stored_arrays(meta: dict) -> list[str]:
    return [name for name, spec in ARRAYS.items() if spec.when is None or meta.get(spec.when)]


def row_shape(name: str, meta: dict) -> tuple[int, ...]:
    return (meta["max_len"],) if ARRAYS[name].per_token else ()


def row_bytes(name: str, meta: dict) -> int:
    return int(np.prod(row_shape(name, meta), dtype=np.int64)) * np.dtype(ARRAYS[name].dtype).itemsize


def write_meta(folder: Path, meta: dict):
    meta = {k: v for k, v in meta.items() if k != "checksum"}
    atomic_write_json(folder / META, dict(meta, checksum=content_digest(meta)))


def read_meta(folder: str | Path) -> dict | None:
    """The folder's verified meta.json, or None when there is none."""
    path = Path(folder) / META
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise CorruptFileError(f"{path} is not valid JSON ({error}): it is truncated or damaged; {WAY_OUT}") from error
    checksum = meta.pop("checksum", None) if isinstance(meta, dict) else None
    if checksum != content_digest(meta):
        raise CorruptFileError(f"{path} does not match its checksum: it was altered or damaged; {WAY_OUT}")
    return meta


def json_safe(value):
    """`value` with non-finite floats as the strings 'inf', '-inf', 'nan': JSON has no Infinity or NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def open_array(folder: Path, name: str, meta: dict, mode: str) -> np.memmap:
    """A stored array memory-mapped, checked against meta.json's shape and dtype."""
    path = folder / f"{name}.npy"
    try:
        array = np.lib.format.open_memmap(path, mode=mode)
    except Exception as error:  # numpy raises OSError, ValueError, even SyntaxError for a garbled header
        raise CorruptFileError(f"{path} cannot be read as an array ({error}): it is missing, truncated or damaged; {WAY_OUT}") from error
    expected = (meta["capacity"], *row_shape(name, meta))
    if array.shape != expected or array.dtype != ARRAYS[name].dtype:
        raise CorruptFileError(
            f"{path} holds {array.dtype} {array.shape}, but {META} says {np.dtype(ARRAYS[name].dtype)} {expected}; {WAY_OUT}"
        )
    return array


def verify_committed(folder: Path, meta: dict, arrays: dict[str, np.ndarray]) -> tuple[dict, hashlib._Hash]:
    """Check the committed rows of every array and the committed JSONL bytes against meta.json's checksums;
    returns the running hashers, ready to take the next rows."""
    num_pairs, digests = meta["num_pairs"], meta.get("digests", {})
    hashers = {}
    for name, array in arrays.items():
        hasher = hashlib.sha256(np.ascontiguousarray(array[:num_pairs]))
        if hasher.hexdigest() != digests.get(name):
            raise CorruptFileError(
                f"{folder / (name + '.npy')}: its {num_pairs} committed rows do not match the checksum in {META}; {WAY_OUT}"
            )
        hashers[name] = hasher

    path = folder / JSONL
    committed = meta.get("jsonl_bytes", 0)
    size = path.stat().st_size if path.is_file() else 0
    if size < committed:
        raise CorruptFileError(f"{path} is {size:,} bytes, shorter than the {committed:,} committed in {META}; {WAY_OUT}")
    jsonl_hasher = hashlib.sha256()
    lines = 0
    if committed:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(min(1 << 20, committed - f.tell())), b""):
                jsonl_hasher.update(block)
                lines += block.count(b"\n")
    if jsonl_hasher.hexdigest() != meta.get("jsonl_digest", hashlib.sha256().hexdigest()) or lines != num_pairs:
        raise CorruptFileError(
            f"{path}: its committed {committed:,} bytes do not match {META} ({lines} lines for {num_pairs} pairs, or "
            f"a different checksum); {WAY_OUT}"
        )
    return hashers, jsonl_hasher


GROW_ROWS = 64  # pairs whose blocks are reserved at a time: a few fsyncs per chunk instead of per append


class PreferenceDataWriter:
    """Append preference pairs to `folder`, resuming from what an earlier run committed there.

    `fingerprint` (a dict of named digests, see storage/fingerprint.py) identifies what makes the pairs: pairs made by
    another plan (other prompts, another judge) are refused, naming what changed."""

    def __init__(self, folder: str | Path, *, capacity: int, max_len: int, pad_id: int, with_ref_logps: bool,
                 fingerprint: dict | None = None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(self.folder)
        settings = dict(capacity=capacity, max_len=max_len, pad_id=pad_id, with_ref_logps=with_ref_logps)

        meta = read_meta(self.folder)
        if meta is None:
            empty = hashlib.sha256().hexdigest()
            self.meta = dict(num_pairs=0, complete=False, **settings, fingerprint=fingerprint, jsonl_bytes=0,
                             jsonl_digest=empty, digests={name: empty for name in stored_arrays(settings)})
            self.arrays = self._create_arrays()
            (self.folder / JSONL).write_bytes(b"")
        else:
            differing = {k: (meta.get(k), v) for k, v in settings.items() if meta.get(k) != v}
            if differing:
                raise ValueError(
                    f"{self.folder} holds pairs written with other settings {differing} (on disk, requested); "
                    f"use another folder, or delete this one to start over"
                )
            changed = changed_parts(meta.get("fingerprint"), fingerprint) if fingerprint is not None else []
            if changed:
                raise ValueError(
                    f"{self.folder} holds pairs made by a different plan (changed: {', '.join(changed)}). Use another "
                    f"folder, or delete this one (overwrite_checkpoints=True) to make them again"
                )
            self.meta = meta
            self.arrays = {name: open_array(self.folder, name, meta, "r+") for name in stored_arrays(meta)}
            self._check_room()  # a rerun on a disk that filled up meanwhile: the clear error now
        self.reserved_rows = self.num_pairs  # rows past it may hold blocks too; reserving them again costs nothing
        self.hashers, self.jsonl_hasher = verify_committed(self.folder, self.meta, self.arrays)
        self._cut_jsonl()
        if meta is None:
            self._commit()

    def _create_arrays(self) -> dict[str, np.memmap]:
        """Sparse arrays of `capacity` rows: numpy writes the header and the last byte, every row is a hole."""
        names = stored_arrays(self.meta)
        needed = sum(row_bytes(name, self.meta) for name in names) * self.meta["capacity"]
        check_free_space(self.folder, needed, f"{self.meta['capacity']:,} preference pairs (or ask for fewer)")
        arrays = {}
        for name in names:
            shape = (self.meta["capacity"], *row_shape(name, self.meta))
            arrays[name] = np.lib.format.open_memmap(self.folder / f"{name}.npy", mode="w+", dtype=ARRAYS[name].dtype, shape=shape)
        return arrays

    def _check_room(self):
        """Free space for the arrays' blocks not reserved yet (st_blocks counts what a file really holds)."""
        unreserved = 0
        for array in self.arrays.values():
            stat = os.stat(array.filename)
            unreserved += max(0, stat.st_size - stat.st_blocks * 512)
        check_free_space(self.folder, unreserved, f"the {self.remaining:,} pairs still to write (or ask for fewer)")

    def _reserve_rows(self, end: int):
        """Reserve the disk blocks of every array up to row `end` (rounded up to a chunk) before rows are written
        there: a write into a hole of a memory-mapped file on a full disk is a SIGBUS, a reservation an ENOSPC."""
        if end <= self.reserved_rows:
            return
        end = min(self.meta["capacity"], max(end, self.reserved_rows + GROW_ROWS))
        for name, array in self.arrays.items():
            size = row_bytes(name, self.meta)
            # whole pages: the kernel writes a dirty page back whole, so a page half in a hole would need blocks too
            first = (array.offset + self.reserved_rows * size) // mmap.PAGESIZE * mmap.PAGESIZE
            last = min(-(-(array.offset + end * size) // mmap.PAGESIZE) * mmap.PAGESIZE, os.path.getsize(array.filename))
            allocate(array.filename, first, last - first)
        self.reserved_rows = end

    def _cut_jsonl(self):
        """Drop JSONL bytes written after the last commit (a run killed between the two writes). Cutting a file
        back to a committed length keeps every committed byte, so a kill during this repair loses nothing."""
        path = self.folder / JSONL
        if path.stat().st_size != self.meta["jsonl_bytes"]:
            os.truncate(path, self.meta["jsonl_bytes"])
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _commit(self):
        self.meta["digests"] = {name: hasher.hexdigest() for name, hasher in self.hashers.items()}
        self.meta["jsonl_digest"] = self.jsonl_hasher.hexdigest()
        write_meta(self.folder, self.meta)

    @property
    def num_pairs(self) -> int:
        return self.meta["num_pairs"]

    @property
    def remaining(self) -> int:
        return self.meta["capacity"] - self.num_pairs

    def append(
        self,
        *,
        chosen: list[Tensor],
        rejected: list[Tensor],
        prompt_len: list[int],
        chosen_reward: list[float],
        rejected_reward: list[float],
        records: list[dict],
        chosen_ref_logp: list[float] | None = None,
        rejected_ref_logp: list[float] | None = None,
        progress: dict | None = None,
    ) -> int:
        """Write pairs (full prompt + response token sequences) and commit them, together with the writer's
        `progress` (e.g. how many prompts were consumed), in one atomic step; returns how many pairs were
        written (fewer than given when capacity is reached)."""
        count = min(len(chosen), self.remaining)
        if progress is not None:
            self.meta["progress"] = progress
        if count == 0:
            if progress is not None:
                self._commit()
            return 0
        start, max_len, pad_id = self.num_pairs, self.meta["max_len"], self.meta["pad_id"]

        columns = dict(chosen=chosen, rejected=rejected, prompt_len=prompt_len, chosen_reward=chosen_reward,
                       rejected_reward=rejected_reward)
        if self.meta["with_ref_logps"]:
            if chosen_ref_logp is None or rejected_ref_logp is None:
                raise ValueError("this folder stores reference log-probs: pass chosen_ref_logp and rejected_ref_logp")
            columns.update(chosen_ref_logp=chosen_ref_logp, rejected_ref_logp=rejected_ref_logp)
            for row, values in enumerate(zip(chosen_ref_logp[:count], rejected_ref_logp[:count])):
                if not all(math.isfinite(float(v)) for v in values):
                    prompt = records[row].get("prompt", "") if row < len(records) else ""
                    raise ValueError(
                        f"the reference log-probs of a pair are not finite {tuple(map(float, values))} (prompt "
                        f"{str(prompt)[:60]!r}): the model produced non-finite logits; nothing of it was written to {self.folder}"
                    )

        # 1) rows past the committed ones, their blocks reserved first (a kill here leaves them uncounted)
        self._reserve_rows(start + count)
        for name, values in columns.items():
            array = self.arrays[name]
            if ARRAYS[name].per_token:
                for row, seq in enumerate(values[:count]):
                    seq = torch.as_tensor(seq).long().cpu()
                    if len(seq) > max_len:
                        raise ValueError(f"a {name} sequence has {len(seq)} tokens; this folder holds at most {max_len}")
                    array[start + row, : len(seq)] = seq.numpy()
                    array[start + row, len(seq) :] = pad_id
            else:
                array[start : start + count] = np.asarray([float(v) for v in values[:count]], dtype=array.dtype)
        lines = b"".join(json.dumps(json_safe(r), allow_nan=False).encode() + b"\n" for r in records[:count])
        try:
            for name, array in self.arrays.items():
                array.flush()
                self.hashers[name].update(np.ascontiguousarray(array[start : start + count]))
            # 2) JSONL lines past the committed bytes
            self._cut_jsonl()
            with open(self.folder / JSONL, "ab") as f:
                f.write(lines)
                f.flush()
                os.fsync(f.fileno())
            self.jsonl_hasher.update(lines)
            # 3) the commit point
            self.meta["num_pairs"] = start + count
            self.meta["jsonl_bytes"] += len(lines)
            self._commit()
        except OSError as error:
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError(error.errno, f"the disk of {self.folder} is full while committing {count} pairs "
                                                 f"({len(lines):,} bytes of records): free some space, then run again") from error
            raise
        return count

    def mark_complete(self):
        self.meta["complete"] = True
        self._commit()


class DPODataset(Dataset):
    """The committed pairs of a folder written by `PreferenceDataWriter`, memory-mapped and verified at open
    (shapes, checksums of the committed rows and records, finite reference log-probs).

    Items are dicts: `chosen`, `rejected` (max_len,) right-padded with the folder's pad_id, `prompt_len`,
    `chosen_reward`, `rejected_reward`, and `chosen_ref_logp`, `rejected_ref_logp` when stored.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        meta = read_meta(self.folder)
        if meta is None:
            raise FileNotFoundError(f"no preference data in {self.folder} ({META} is missing)")
        self.meta = meta
        self.pad_id = meta["pad_id"]
        self.arrays = {name: open_array(self.folder, name, meta, "r") for name in stored_arrays(meta)}
        verify_committed(self.folder, meta, self.arrays)
        for name in REF_ARRAYS:
            if name in self.arrays and not np.isfinite(self.arrays[name][: len(self)]).all():
                raise CorruptFileError(f"{self.folder / (name + '.npy')} holds non-finite reference log-probs; {WAY_OUT}")

    def fingerprint(self) -> str:
        """The checksums of the committed pairs: identifies the content without reading it again."""
        return content_digest([self.meta["num_pairs"], self.meta["digests"], self.meta["jsonl_digest"]])[:16]

    @property
    def has_ref_logps(self) -> bool:
        return self.meta["with_ref_logps"]

    def __len__(self) -> int:
        return self.meta["num_pairs"]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"pair {index} out of range for {len(self)} pairs")
        return {name: torch.from_numpy(np.array(array[index])) for name, array in self.arrays.items()}

    def records(self) -> list[dict]:
        """The human-readable JSONL records of the committed pairs (non-finite scores are the strings 'inf',
        '-inf', 'nan')."""
        path = self.folder / JSONL
        with open(path, "rb") as f:
            data = f.read(self.meta["jsonl_bytes"])
        records = []
        for number, line in enumerate(data.splitlines(), start=1):
            try:
                records.append(json.loads(line))
            except ValueError as error:
                raise CorruptFileError(f"{path} line {number} is not valid JSON ({error}); {WAY_OUT}") from error
        return records
