"""Checkpoints: written by the main process only, atomically, and loaded weights-only.

Atomic: the file is written under a temporary name in the same folder and renamed into place, so a
crash mid-write never leaves a file with the final name. Weights-only loading (torch's default since
2.6) means a checkpoint holds tensors and plain containers, never pickled code.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn


def atomic_torch_save(obj, path: str | Path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_checkpoint(accelerator: Accelerator, model: nn.Module, path: str | Path, **extra):
    """Save `model`'s weights (unwrapped from DDP/FSDP/DeepSpeed) and `extra` plain values to `path`.

    Every process must call this: gathering a sharded state dict is collective; only the main process writes.
    """
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        atomic_torch_save(dict(model=state_dict, **extra), path)
    accelerator.wait_for_everyone()


def load_checkpoint(model: nn.Module, path: str | Path, strict: bool = True) -> dict:
    """Load weights saved by `save_checkpoint` into `model` (strictly by default); returns the extras."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    package = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(package.pop("model"), strict=strict)
    return package
