"""Checkpoints: written by the main process only, atomically, and loaded weights-only.

Atomic: the file is written under a temporary name in the same folder and renamed into place, so a
crash mid-write never leaves a file with the final name. Weights-only loading (torch's default since
2.6) means a checkpoint holds tensors and plain containers, never pickled code. A model with LoRA adapters
(adapters.py) is saved as its trainable weights only: the frozen base never changes, so they restore it exactly.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn

from self_rewarding_lm_pytorch.adapters import adapter_model, trainable_names


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
    if adapter_model(model) is not None:
        names = trainable_names(model)
        state_dict = {k: v for k, v in state_dict.items() if k in names}
        extra["adapters_only"] = True
    if accelerator.is_main_process:
        atomic_torch_save(dict(model=state_dict, **extra), path)
    accelerator.wait_for_everyone()


def load_checkpoint(model: nn.Module, path: str | Path, strict: bool = True) -> dict:
    """Load weights saved by `save_checkpoint` into `model` (strictly by default); returns the extras."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    package = torch.load(path, map_location="cpu", weights_only=True)
    state_dict = package.pop("model")
    if not package.pop("adapters_only", False):
        model.load_state_dict(state_dict, strict=strict)
        return package
    # the trainable (adapter) weights only: every one of them must be there, and nothing else
    missing = trainable_names(model) - set(state_dict)
    unexpected = set(state_dict) - set(model.state_dict())
    if strict and (missing or unexpected):
        raise ValueError(
            f"{path} holds adapter weights that do not fit this model: missing {sorted(missing)[:4]}, "
            f"unexpected {sorted(unexpected)[:4]}. Attach the same adapters (same LoraConfig) before loading"
        )
    model.load_state_dict(state_dict, strict=False)
    return package
