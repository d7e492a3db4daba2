"""Files that can be trusted: atomic writes, checksums recorded at write and verified at load, real disk space.

- `atomic_write(path, write)`: the bytes go to a temporary `.{name}.tmp-{pid}` beside the target, are fsynced,
  then renamed over it (and the folder fsynced), so a crash leaves the old file or the new one, never half of one.
  `remove_stale_temp_files(folder)` deletes the temporaries of writers that were killed.
- `content_digest(obj)`: a SHA-256 over a tree of tensors and plain values (dtype, shape and bytes of each
  tensor), stored inside a checkpoint and recomputed when it is loaded: a flipped byte is found even where the
  container format (torch's zip) does not check.
- `allocate(path, offset, length)`: reserve a file's blocks for real before a memory map writes there. A hole of
  a sparse file on a full disk kills the writer with SIGBUS at the first page it touches; a reservation fails at
  once with ENOSPC, which becomes a `DiskFullError` naming the folder and the bytes needed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import torch

TEMP_FILE = re.compile(r"^\..+\.tmp-(\d+)$")


class CorruptFileError(ValueError):
    """A file the library wrote does not read back as written (truncated, garbled, or from another writer)."""


class DiskFullError(OSError):
    """Not enough free space for a file the library must write."""


def temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def fsync_folder(folder: Path):
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable):
    """Call `write(file)` on a temporary file, fsync it and rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_folder(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_json(path: str | Path, obj: dict):
    # allow_nan=False: `Infinity` and `NaN` are not JSON, other readers reject them
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, allow_nan=False).encode()))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temp_files(folder: str | Path, recursive: bool = True) -> list[Path]:
    """Delete temporaries left by killed writers (their process is gone); returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in folder.rglob(".*.tmp-*") if recursive else folder.glob(".*.tmp-*"):
        match = TEMP_FILE.match(entry.name)
        if match and entry.is_file() and int(match.group(1)) != os.getpid() and not _pid_alive(int(match.group(1))):
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")


def _update(hasher, obj):
    if torch.is_tensor(obj):
        hasher.update(f"T{obj.dtype}{tuple(obj.shape)}".encode())
        hasher.update(tensor_bytes(obj))
    elif isinstance(obj, np.ndarray):
        hasher.update(f"A{obj.dtype}{obj.shape}".encode())
        hasher.update(np.ascontiguousarray(obj).tobytes())
    elif isinstance(obj, dict):
        hasher.update(f"D{len(obj)}".encode())
        for key in sorted(obj, key=repr):
            _update(hasher, key)
            _update(hasher, obj[key])
    elif isinstance(obj, (list, tuple)):
        hasher.update(f"L{len(obj)}".encode())
        for item in obj:
            _update(hasher, item)
    elif obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        hasher.update(f"{type(obj).__name__}:{obj!r};".encode())
    else:
        raise TypeError(f"cannot checksum a {type(obj).__name__}: checkpoints hold tensors and plain values only")


def content_digest(obj) -> str:
    """SHA-256 of a tree of dicts, lists, tensors, arrays and plain values, independent of how it is stored."""
    hasher = hashlib.sha256()
    _update(hasher, obj)
    return hasher.hexdigest()


def free_bytes(folder: Path) -> int:
    return shutil.disk_usage(folder).free


def allocate(path: str | Path, offset: int, length: int):
    """Reserve bytes [offset, offset + length) of an existing file on disk for real (not as a sparse hole)."""
    path = Path(path)
    if length <= 0:
        return
    try:
        fd = os.open(path, os.O_RDWR)
        try:
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(fd, offset, length)
            else:  # no fallocate (macOS): write the zeros
                os.lseek(fd, offset, os.SEEK_SET)
                chunk = b"\0" * (1 << 20)
                for start in range(0, length, len(chunk)):
                    os.write(fd, chunk[: min(len(chunk), length - start)])
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(
                error.errno,
                f"the disk of {path.parent} is full: {path.name} needs {length:,} more bytes, "
                f"{free_bytes(path.parent):,} are free. Free some space or use a folder on another disk, then run again",
            ) from error
        raise


def check_free_space(folder: str | Path, nbytes: int, what: str):
    """Raise `DiskFullError` before writing when `folder`'s disk has less than `nbytes` free."""
    free = free_bytes(Path(folder))
    if free < nbytes:
        raise DiskFullError(
            errno.ENOSPC,
            f"not enough space in {folder} for {what}: {nbytes:,} bytes needed, {free:,} free. Free some space or "
            f"use a folder on another disk, then run again",
        )
