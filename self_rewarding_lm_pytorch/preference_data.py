"""Preference pairs on disk: written incrementally by pair generation, read by DPO as memory-mapped arrays.

A folder holds one stage's pairs:
    chosen.npy, rejected.npy       (capacity, max_len) token ids: prompt + response, right-padded with pad_id
    prompt_len.npy                 (capacity,)
    chosen_reward.npy, rejected_reward.npy          (capacity,) the scores that picked the pair
    chosen_ref_logp.npy, rejected_ref_logp.npy      (capacity,) optional: log p_ref(response | prompt), summed
    pairs.jsonl                    one human-readable record per pair (prompt, responses, scores, judge outputs)
    meta.json                      num_pairs written so far, capacity, max_len, pad_id, complete

Arrays start with room for at most `INITIAL_ROWS` pairs and grow (doubling, never past `capacity`) as pairs
arrive, so a run that makes few pairs never holds disk for thousands; their row count is at least the number
of committed pairs, which is all a reader uses. `meta.json` is the commit point: rows and JSONL lines are flushed
first, then `num_pairs` is advanced by an atomic rename. A run killed at any moment therefore resumes with
exactly the pairs counted in meta.json; rows or JSONL lines past that count are overwritten or dropped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

META = "meta.json"
JSONL = "pairs.jsonl"
TOKEN_ARRAYS = ("chosen", "rejected")
VALUE_ARRAYS = ("prompt_len", "chosen_reward", "rejected_reward")
REF_ARRAYS = ("chosen_ref_logp", "rejected_ref_logp")
INITIAL_ROWS = 64  # rows allocated when a folder is created; arrays double as pairs arrive


def _write_json_atomic(path: Path, obj: dict):
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def read_meta(folder: str | Path) -> dict | None:
    path = Path(folder) / META
    return json.loads(path.read_text()) if path.is_file() else None


class PreferenceDataWriter:
    """Append preference pairs to `folder`, resuming from what an earlier run committed there."""

    def __init__(self, folder: str | Path, *, capacity: int, max_len: int, pad_id: int, with_ref_logps: bool):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        settings = dict(capacity=capacity, max_len=max_len, pad_id=pad_id, with_ref_logps=with_ref_logps)

        meta = read_meta(self.folder)
        if meta is None:
            self.meta = dict(num_pairs=0, complete=False, **settings)
            mode = "w+"
        else:
            differing = {k: (meta.get(k), v) for k, v in settings.items() if meta.get(k) != v}
            if differing:
                raise ValueError(
                    f"{self.folder} holds pairs written with other settings {differing} (on disk, requested); "
                    f"use another folder, or delete this one to start over"
                )
            self.meta = meta
            mode = "r+"

        names = TOKEN_ARRAYS + VALUE_ARRAYS + (REF_ARRAYS if with_ref_logps else ())
        self.arrays = {name: self._open(name, mode) for name in names}
        self._truncate_jsonl(self.num_pairs)
        if mode == "w+":
            _write_json_atomic(self.folder / META, self.meta)

    def _open(self, name: str, mode: str, rows: int | None = None) -> np.memmap:
        rows = min(self.meta["capacity"], INITIAL_ROWS) if rows is None else rows
        shape, dtype = ((rows, self.meta["max_len"]), np.int64) if name in TOKEN_ARRAYS else ((rows,), np.float32)
        if name == "prompt_len":
            dtype = np.int64
        path = self.folder / f"{name}.npy"
        if mode == "w+":
            return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        return np.lib.format.open_memmap(path, mode="r+")

    def _ensure_rows(self, rows: int):
        """Grow every array to hold `rows` pairs: a bigger copy, renamed over the old file. A run killed between
        two arrays leaves them different sizes, each still holding every committed row."""
        for name, array in self.arrays.items():
            if array.shape[0] >= rows:
                continue
            grown_rows = min(self.meta["capacity"], max(rows, 2 * array.shape[0]))
            path, tmp = self.folder / f"{name}.npy", self.folder / f".{name}.npy.tmp-{os.getpid()}"
            grown = np.lib.format.open_memmap(tmp, mode="w+", dtype=array.dtype, shape=(grown_rows, *array.shape[1:]))
            grown[: array.shape[0]] = array
            grown.flush()
            del grown, array
            os.replace(tmp, path)
            self.arrays[name] = np.lib.format.open_memmap(path, mode="r+")

    def _truncate_jsonl(self, num_lines: int):
        """Drop JSONL lines written after the last commit (a run killed between the two writes)."""
        path = self.folder / JSONL
        if not path.exists():
            path.touch()
            return
        with open(path, "rb") as f:
            lines = f.readlines()
        if len(lines) != num_lines:
            with open(path, "wb") as f:
                f.writelines(lines[:num_lines])

    @property
    def num_pairs(self) -> int:
        return self.meta["num_pairs"]

    @property
    def progress(self) -> dict:
        """What the producer committed with the last pairs (empty for a new folder)."""
        return self.meta.get("progress", {})

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
                _write_json_atomic(self.folder / META, self.meta)
            return 0
        start, max_len, pad_id = self.num_pairs, self.meta["max_len"], self.meta["pad_id"]

        columns = dict(chosen=chosen, rejected=rejected, prompt_len=prompt_len, chosen_reward=chosen_reward,
                       rejected_reward=rejected_reward)
        if self.meta["with_ref_logps"]:
            if chosen_ref_logp is None or rejected_ref_logp is None:
                raise ValueError("this folder stores reference log-probs: pass chosen_ref_logp and rejected_ref_logp")
            columns.update(chosen_ref_logp=chosen_ref_logp, rejected_ref_logp=rejected_ref_logp)

        self._ensure_rows(start + count)
        for name, values in columns.items():
            array = self.arrays[name]
            if name in TOKEN_ARRAYS:
                for row, seq in enumerate(values[:count]):
                    seq = torch.as_tensor(seq).long().cpu()
                    if len(seq) > max_len:
                        raise ValueError(f"a {name} sequence has {len(seq)} tokens; this folder holds at most {max_len}")
                    array[start + row, : len(seq)] = seq.numpy()
                    array[start + row, len(seq) :] = pad_id
            else:
                array[start : start + count] = np.asarray([float(v) for v in values[:count]], dtype=array.dtype)
            array.flush()

        with open(self.folder / JSONL, "a") as f:
            for record in records[:count]:
                f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

        self.meta["num_pairs"] = start + count  # the commit point
        _write_json_atomic(self.folder / META, self.meta)
        return count

    def mark_complete(self):
        self.meta["complete"] = True
        _write_json_atomic(self.folder / META, self.meta)


class DPODataset(Dataset):
    """The committed pairs of a folder written by `PreferenceDataWriter`, memory-mapped.

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
        names = TOKEN_ARRAYS + VALUE_ARRAYS + (REF_ARRAYS if meta["with_ref_logps"] else ())
        self.arrays = {name: np.load(self.folder / f"{name}.npy", mmap_mode="r") for name in names}

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
        """The human-readable JSONL records of the committed pairs."""
        with open(self.folder / JSONL) as f:
            return [json.loads(line) for line, _ in zip(f, range(len(self)))]
