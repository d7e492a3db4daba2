"""The on-disk layout of a preference-pair folder, shared by its writer and its reader: which arrays it holds and
their row shapes, meta.json (checksummed), and the check that what meta.json says is committed is really there.
The protocol itself (append, commit, resume) is `preference_data.PreferenceDataWriter`."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from self_rewarding_lm_pytorch.storage.integrity import (
    CorruptFileError,
    atomic_write_json,
    content_digest,
)

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
TOKEN_ARRAYS = tuple(name for name, spec in ARRAYS.items() if spec.per_token)
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
