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

from self_rewarding_lm_pytorch.sharding import full_state_dict, load_full_state_dict


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
    A sharded model's weights are gathered into one full state dict, which loads into the unsharded model.
    """
    state_dict = full_state_dict(accelerator, model)
    if accelerator.is_main_process:
        atomic_torch_save(dict(model=state_dict, **extra), path)
    accelerator.wait_for_everyone()


def load_checkpoint(model: nn.Module, path: str | Path, strict: bool = True) -> dict:
    """Load weights saved by `save_checkpoint` into `model` (strictly by default; sharded or not); returns the extras."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    package = torch.load(path, map_location="cpu", weights_only=True)
    load_full_state_dict(model, package.pop("model"), strict=strict)
    return package
