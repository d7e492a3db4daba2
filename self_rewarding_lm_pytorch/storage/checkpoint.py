"""Checkpoints: written by the main process only, atomically, with a checksum, and loaded weights-only.

Atomic: the file is written under a temporary name in the same folder, fsynced and renamed into place, so a
crash mid-write never leaves a file with the final name (storage/integrity.py). Checked: the package holds a SHA-256
of its own tensors and values, recomputed at load, so a truncated or garbled file is refused with its name
instead of loading wrong weights. Weights-only loading (torch's default since 2.6) means a checkpoint holds
tensors and plain containers, never pickled code. A model with LoRA adapters (models/adapters.py) is saved as its
trainable weights only: the frozen base never changes, so they restore it exactly.
"""

from __future__ import annotations

from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn

from self_rewarding_lm_pytorch.models.adapters import adapter_model, trainable_names
from self_rewarding_lm_pytorch.models.sharding import full_state_dict, load_full_state_dict
from self_rewarding_lm_pytorch.storage.integrity import CorruptFileError, atomic_write, content_digest

CHECKSUM = "checksum"


def atomic_torch_save(obj: dict, path: str | Path):
    """Save `obj` (a dict of tensors and plain values) to `path` atomically, with its checksum."""
    package = dict(obj, **{CHECKSUM: content_digest(obj)})
    atomic_write(path, lambda f: torch.save(package, f))


def read_checkpoint(path: str | Path, way_out: str = "delete it to redo what it saved") -> dict:
    """The verified contents of a file written by `atomic_torch_save` (the checksum removed).
    A missing, unreadable or altered file is an error naming the file and `way_out`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        package = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, garbled header, pickled code refused by weights-only loading
        raise CorruptFileError(
            f"{path} cannot be read as a checkpoint ({type(error).__name__}: {str(error)[:300]}): it is truncated, "
            f"damaged or not a weights-only checkpoint; {way_out}"
        ) from error
    if not isinstance(package, dict) or CHECKSUM not in package:
        raise CorruptFileError(f"{path} has no checksum, so it was not written by this library's save_checkpoint; {way_out}")
    expected = package.pop(CHECKSUM)
    if content_digest(package) != expected:
        raise CorruptFileError(f"{path} is damaged: its contents do not match the checksum written with them; {way_out}")
    return package


def save_checkpoint(accelerator: Accelerator, model: nn.Module, path: str | Path, **extra):
    """Save `model`'s weights (unwrapped from DDP/FSDP/DeepSpeed) and `extra` plain values to `path`.

    Every process must call this: gathering a sharded state dict is collective; only the main process writes.
    A sharded model's weights are gathered into one full state dict, which loads into the unsharded model.
    """
    state_dict = full_state_dict(accelerator, model)
    if adapter_model(model) is not None:  # the adapters only: the frozen base is what the run started from
        names = trainable_names(model)
        state_dict = {k: v for k, v in state_dict.items() if k in names}
        extra["adapters_only"] = True
    if accelerator.is_main_process:
        atomic_torch_save(dict(model=state_dict, **extra), path)
    accelerator.wait_for_everyone()


def load_checkpoint(model: nn.Module, path: str | Path, strict: bool = True) -> dict:
    """Load weights saved by `save_checkpoint` into `model` (strictly by default; sharded or not), after verifying
    the file's checksum; returns the extras."""
    package = read_checkpoint(path)
    load_model_weights(model, package, path, strict=strict)
    return package


def load_model_weights(model: nn.Module, package: dict, path: str | Path, strict: bool = True):
    """Move the weights of a verified checkpoint `package` (from `read_checkpoint`) into `model`: all of them, or
    for a package saved with adapters (`adapters_only`) the trainable weights, every one of which must be there.
    A sharded model receives the full weights sharded (every process calls this with the same package)."""
    state_dict = package.pop("model")
    if not package.pop("adapters_only", False):
        load_full_state_dict(model, state_dict, strict=strict)
        return
    missing = trainable_names(model) - set(state_dict)
    unexpected = set(state_dict) - set(model.state_dict())
    if strict and (missing or unexpected):
        raise ValueError(
            f"{path} holds adapter weights that do not fit this model: missing {sorted(missing)[:4]}, "
            f"unexpected {sorted(unexpected)[:4]}. Attach the same adapters (same LoraConfig) before loading"
        )
    load_full_state_dict(model, state_dict, strict=False)
