"""Resume inside a stage: the state of a training loop saved every `checkpoint_every` optimizer steps.

`{prefix}-step-{N}.pt` (storage/checkpoint.py: atomic, checksummed, written by the main process) holds the model,
the optimizer (a sharded model's gathered into full tensors), the scheduler, the step, Accelerate's micro-batch
counter, the logged rows, what the trainer adds (an early stopper's state) and, for every process in process order
(`ranks`), its RNG states (torch, CUDA, numpy, random) and data position (the shuffling generator's state at the
start of the epoch and now, and the micro-batches consumed in the epoch), gathered to the main process at the save.
The last step of a loop is always saved, marked finished.

A rerun finds the latest file of its prefix, refuses one written by other settings, data or initial weights (the
model's weights when the trainer was built, storage/fingerprint.py), restores everything, each process its own RNG and data position, and says "resuming <name> from step N". The epoch
is replayed from its saved shuffle with the consumed batches skipped, and the RNG is restored after that skip, so the
following draws (each process's dropout, the next epoch's shuffle) are those of an uninterrupted run: the final
weights are equal, on one process or several, data-parallel or sharded. A save made by another number of processes
is refused unless its loop is finished (then only the weights and rows are used): the data split and each process's
draws depend on the number.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.data_loader import get_sampler
from accelerate.utils import extract_model_from_parallel, gather_object
from torch import nn

from self_rewarding_lm_pytorch.models.sharding import full_optimizer_state_dict, load_full_optimizer_state_dict
from self_rewarding_lm_pytorch.storage.checkpoint import load_model_weights, read_checkpoint, save_checkpoint
from self_rewarding_lm_pytorch.storage.fingerprint import changed_parts
from self_rewarding_lm_pytorch.storage.integrity import content_digest, remove_stale_temp_files


def shuffle_generator() -> torch.Generator:
    """The generator a training DataLoader shuffles with, seeded from the global RNG (so by `set_seed`). Its own
    generator keeps the data order out of the global RNG, and its state is what a resume restores."""
    return torch.Generator().manual_seed(int(torch.randint(2**62, ()).item()))


def loader_generator(loader) -> torch.Generator | None:
    """The generator `loader` (plain, or prepared by Accelerate) shuffles with, None for a sampler without one (it
    then draws from the global RNG, which a resume restores). On several processes the sampler sits inside
    Accelerate's per-process batch sampler (`BatchSamplerShard.batch_sampler`), where `get_sampler` does not look."""
    sampler = get_sampler(loader)
    if sampler is None:
        sampler = getattr(getattr(getattr(loader, "batch_sampler", None), "batch_sampler", None), "sampler", None)
    if sampler is None:
        raise TypeError(f"the training loader ({type(loader).__name__}) has no sampler to find its shuffling "
                        f"generator in, so its data position cannot be saved")
    return getattr(sampler, "generator", None)


def rng_state() -> dict:
    version, numpy_state, position, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [version, torch.from_numpy(numpy_state.astype(np.int64)), position, has_gauss, cached]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict):
    torch.set_rng_state(state["torch"])
    version, python_state, gauss = state["python"]
    random.setstate((version, tuple(python_state), gauss))
    version, numpy_state, position, has_gauss, cached = state["numpy"]
    np.random.set_state((version, numpy_state.numpy().astype(np.uint32), position, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class TrainState:
    """Save and restore one training loop. `batches()` replaces `for batch in loader` (one epoch per call);
    `save_if_due(step)` goes after each optimizer step; `resume()` once before the loop."""

    def __init__(self, accelerator: Accelerator, *, model: nn.Module, optimizer, scheduler, loader,
                 folder: str | Path, prefix: str, every: int | None, name: str, fingerprint: dict):
        self.accelerator, self.model, self.optimizer, self.scheduler, self.loader = accelerator, model, optimizer, scheduler, loader
        self.folder, self.prefix, self.every, self.name, self.fingerprint = Path(folder), prefix, every, name, fingerprint
        self.generator = loader_generator(loader)
        self.epoch_start: torch.Tensor | None = None  # the shuffling generator's state when this epoch began
        self.consumed = 0  # micro-batches of this epoch handed out
        self.pending: dict | None = None  # a loaded state whose data position and RNG are still to apply
        self.last_saved: Path | None = None

    def saved_steps(self) -> list[tuple[int, Path]]:
        pattern = re.compile(rf"^{re.escape(self.prefix)}-step-(\d+)\.pt$")
        found = [(int(m.group(1)), p) for p in self.folder.glob(f"{self.prefix}-step-*.pt") if (m := pattern.match(p.name))]
        return sorted(found)

    def resume(self) -> dict | None:
        """Load the latest saved state (None when there is none, or when `checkpoint_every` is unset); returns
        it, with `step`, `history`, `finished` and the trainer's extras."""
        if self.accelerator.is_main_process:
            remove_stale_temp_files(self.folder)  # what a killed save left behind
        saved = self.saved_steps() if self.every else []
        if not saved:
            return None
        step, path = saved[-1]
        state = read_checkpoint(path, way_out="delete it to resume from the save before it")
        changed = changed_parts(state.get("fingerprint"), self.fingerprint)
        if changed:
            raise ValueError(
                f"{path} was saved by {self.name} with other settings, data or initial weights (changed: "
                f"{', '.join(changed)}){initial_weights_note(state.get('fingerprint'), changed)}. Use another "
                f"checkpoint folder, or delete {self.folder} (overwrite_checkpoints=True) to start over"
            )
        ranks, processes = state.pop("ranks", None), self.accelerator.num_processes
        if ranks is None:
            raise ValueError(
                f"{path} holds no per-process RNG states and data positions (it was saved by an earlier version of "
                f"the library), so {self.name} cannot resume from it as if never stopped. Use another checkpoint "
                f"folder, or delete {self.folder} (overwrite_checkpoints=True) to start over"
            )
        if len(ranks) != processes and not state["finished"]:
            raise ValueError(
                f"{path} was saved by {len(ranks)} process(es) and this run has {processes}: each process's RNG "
                f"states and data position are saved for it, so {self.name} resumes inside the stage on "
                f"{len(ranks)} process(es) only. Relaunch with {len(ranks)}, or delete {self.folder} "
                f"(overwrite_checkpoints=True) to start the stage over"
            )
        if not state["finished"]:  # a finished loop trains no more: its RNG and data position are never used
            state.update(ranks[self.accelerator.process_index])
        load_model_weights(self.accelerator.unwrap_model(self.model), state, path)  # LoRA: the adapters
        load_full_optimizer_state_dict(self.model, self.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.accelerator.step = state["accumulation_counter"]
        self.pending = state
        self.last_saved = path
        self.accelerator.print(f"resuming {self.name} from step {step}")
        return state

    def batches(self):
        """One epoch of the loader; after `resume()`, the rest of the saved epoch with the RNG as it was saved."""
        pending, self.pending = self.pending, None
        skip = 0
        if pending is not None:
            skip = pending["consumed"] if pending["consumed"] < len(self.loader) else 0  # 0: saved as an epoch ended
            if self.generator is not None:
                self.generator.set_state(pending["epoch_start"] if skip else pending["generator"])
            if not skip:
                set_rng_state(pending["rng"])  # before the iterator is made: making it draws from the RNG
        self.epoch_start = None if self.generator is None else self.generator.get_state()
        self.consumed = 0
        for batch in self.loader:
            self.consumed += 1
            if self.consumed <= skip:
                continue
            if self.consumed == skip + 1 and skip:
                set_rng_state(pending["rng"])
            yield batch

    def save_if_due(self, step: int, *, history: list[dict], finished: bool, **extra):
        """Save every `every` steps and at the end of the loop (`finished`), on every process (collective)."""
        if not self.every or not (step % self.every == 0 or finished):
            return
        path = self.folder / f"{self.prefix}-step-{step}.pt"
        mine = {"rng": rng_state(), "epoch_start": self.epoch_start, "consumed": self.consumed,
                "generator": None if self.generator is None else self.generator.get_state()}
        ranks = gather_object([mine]) if self.accelerator.num_processes > 1 else [mine]  # in process order
        save_checkpoint(
            self.accelerator, self.model, path,
            step=step, finished=finished, fingerprint=self.fingerprint, history=history,
            optimizer=full_optimizer_state_dict(self.model, self.optimizer), scheduler=self.scheduler.state_dict(),
            ranks=ranks, accumulation_counter=self.accelerator.step, **extra,
        )
        self.last_saved = path

    def describe_last_save(self) -> str:
        return str(self.last_saved) if self.last_saved else "none (set checkpoint_every to save during the stage)"


def weights_digest(model: nn.Module) -> str:
    """A digest of all of `model`'s weights as they are now (its whole state dict: a LoRA model's base weights and
    adapters), whatever their layout: a sharded tensor (FSDP2) is gathered whole, one at a time (collective: every
    process calls this), so the digest is the same on every process, sharded or not, on any number of processes. A
    model Accelerate shards in place when a stage trains (its FSDP plugin) is sharded when the next stage starts in
    an uninterrupted run and whole when a resumed run loads that stage's save: both give this digest."""
    state = extract_model_from_parallel(model).state_dict()
    return content_digest({name: content_digest(t.full_tensor() if hasattr(t, "full_tensor") else t)
                           for name, t in sorted(state.items())})[:16]


def initial_weights_note(saved: dict | None, changed: list[str]) -> str:
    """Why `initial_weights` is among the `changed` parts of a `saved` fingerprint: other weights, or none recorded."""
    if "initial_weights" not in changed:
        return ""
    if not isinstance(saved, dict) or "initial_weights" not in saved:
        return " (the save records no initial weights: an earlier version of the library made it)"
    return (" (the model the trainer is built on has other weights than the one that run started from: build it as "
            "that run did to resume)")


def loop_fingerprint(config, *, initial_weights: nn.Module | None = None, **datasets) -> dict:
    """What a saved state must match to be resumed: the loop's settings, its data and, given `initial_weights`
    (the model as the trainer is built, before a resume loads weights into it), the weights it starts from. A rerun
    with other initial weights is another run: resuming would silently continue the old run's weights."""
    from self_rewarding_lm_pytorch.storage.fingerprint import config_fingerprint, dataset_digest

    parts = config_fingerprint(config, skip=("checkpoint_every",))
    parts.update({name: dataset_digest(data) for name, data in datasets.items() if data is not None})
    if initial_weights is not None:
        parts["initial_weights"] = weights_digest(initial_weights)
    return parts


class NonFiniteStepError(FloatingPointError):
    """A training step's loss or gradients were NaN or infinite."""


def step_is_finite(accelerator: Accelerator, micro_losses: list, grad_norm, *, name: str, step: int, skip: bool,
                   last_save: str) -> bool:
    """Whether this optimizer step's losses and gradient norm are finite on every process. When not: raise,
    naming the step, the stage and the last good checkpoint, or return False to skip the update if `skip`."""
    # a sharded model's gradient norm is a DTensor: its full value (every process calls this)
    grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
    values = torch.stack([torch.as_tensor(v).detach().float().reshape(()).cpu() for v in [*micro_losses, grad_norm]])
    bad = accelerator.reduce((~values.isfinite()).any().float().to(accelerator.device), "sum")
    if bad.item() == 0:
        return True
    if skip:
        accelerator.print(f"{name}: step {step} has a non-finite loss or gradient; its update is skipped")
        return False
    raise NonFiniteStepError(
        f"{name}: the loss or the gradients are not finite at step {step} (the weights were not updated by it). "
        f"Last good checkpoint: {last_save}. Lower the learning rate or check the data; or set "
        f"skip_nonfinite_steps=True in the stage config to skip such steps"
    )
