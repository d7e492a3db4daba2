"""Early stopping with the best weights kept in memory.

Every process evaluates, the score is averaged across processes, so every process sees the same number and
takes the same decision; the best weights are a CPU copy of the state dict, so restoring them needs no file
that one process wrote and another might read before it exists.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable, Literal

import torch
from accelerate import Accelerator
from accelerate.utils import extract_model_from_parallel
from torch import Tensor, nn

from self_rewarding_lm_pytorch.models.adapters import adapter_model, trainable_names

Score = float | int | Tensor


class EarlyStopper:
    """`EarlyStopper(eval_fn, mode='min', patience=3, min_delta=0.0)`; `stopper(model, accelerator)` returns
    whether to stop.

    `eval_fn(model)` scores the (unwrapped) model and returns a float, an int or a 0-d tensor. It runs under
    `torch.no_grad()` with the model (and `eval_fn`, if it is a Module) in eval mode; their train flags are
    restored afterwards. `mode='min'` is for losses (lower is better), `'max'` for accuracies and rewards.

    A score improves on the best so far when it is better by more than `min_delta`; `patience` evaluations in
    a row without improvement mean stop. The weights at the best score are copied to CPU memory and
    `restore_best(model)` loads them back. `reset()` forgets everything (a stopper can serve several stages).
    """

    def __init__(
        self,
        eval_fn: nn.Module | Callable[[nn.Module], Score],
        *,
        mode: Literal["min", "max"] = "min",
        patience: int = 3,
        min_delta: float = 0.0,
    ):
        if not callable(eval_fn):
            raise TypeError(f"EarlyStopper.eval_fn must be a Module or a callable taking the model, got {type(eval_fn).__name__}")
        if mode not in ("min", "max"):
            raise ValueError(f"EarlyStopper.mode must be 'min' (lower is better, e.g. a loss) or 'max', got {mode!r}")
        if patience < 1:
            raise ValueError(f"EarlyStopper.patience must be >= 1, got {patience}")
        if not min_delta >= 0:
            raise ValueError(f"EarlyStopper.min_delta must be >= 0, got {min_delta}")
        self.eval_fn = eval_fn
        self.mode = mode
        self.patience = patience
        self.min_delta = min_delta
        self.reset()

    def fingerprint(self) -> str:
        """What decides its scores and decisions (not the scores it has seen)."""
        from self_rewarding_lm_pytorch.storage.fingerprint import describe

        return describe(dict(eval_fn=self.eval_fn, mode=self.mode, patience=self.patience, min_delta=self.min_delta))

    def reset(self):
        self.scores: list[float] = []
        self.best_score: float | None = None
        self.best_index: int | None = None  # position of the best score in `scores`
        self.num_bad_evals = 0
        self.best_state_dict: dict[str, Tensor] | None = None

    def state_dict(self) -> dict:
        """What it has seen, to resume a stage mid-way (plain values and CPU tensors)."""
        return dict(scores=self.scores, best_score=self.best_score, best_index=self.best_index,
                    num_bad_evals=self.num_bad_evals, best_state_dict=self.best_state_dict)

    def load_state_dict(self, state: dict):
        self.scores, self.best_score, self.best_index = list(state["scores"]), state["best_score"], state["best_index"]
        self.num_bad_evals, self.best_state_dict = state["num_bad_evals"], state["best_state_dict"]

    @property
    def should_stop(self) -> bool:
        return self.num_bad_evals >= self.patience

    def improves(self, score: float) -> bool:
        if math.isnan(score):
            return False
        if self.best_score is None:
            return True
        if self.mode == "min":
            return score < self.best_score - self.min_delta
        return score > self.best_score + self.min_delta

    def evaluate(self, model: nn.Module, accelerator: Accelerator | None = None) -> float:
        """The score of `model`, averaged across processes."""
        unwrapped = extract_model_from_parallel(model)
        modules = [model] + ([self.eval_fn] if isinstance(self.eval_fn, nn.Module) else [])
        flags = [m.training for m in modules]
        for m in modules:
            m.eval()
        try:
            with torch.no_grad():
                score = self.eval_fn(unwrapped)
        finally:
            for m, flag in zip(modules, flags):
                m.train(flag)

        score = to_float(score)
        if accelerator is not None and accelerator.num_processes > 1:
            # all-reduce hands every process the same value, hence the same decision and the same snapshot
            score = accelerator.reduce(torch.tensor(score, dtype=torch.float64, device=accelerator.device), "mean").item()
        return score

    def __call__(self, model: nn.Module, accelerator: Accelerator | None = None) -> bool:
        score = self.evaluate(model, accelerator)
        self.scores.append(score)

        if self.improves(score):
            self.best_score, self.best_index = score, len(self.scores) - 1
            self.num_bad_evals = 0
            state_dict = extract_model_from_parallel(model).state_dict()
            if adapter_model(model) is not None:  # LoRA: only the adapters change, so only they are kept
                names = trainable_names(model)
                state_dict = {name: t for name, t in state_dict.items() if name in names}
            self.best_state_dict = {name: t.detach().to("cpu", copy=True) for name, t in state_dict.items()}
        else:
            self.num_bad_evals += 1

        return self.should_stop

    def restore_best(self, model: nn.Module):
        """Load the weights of the best evaluation into `model` (wrapped or not)."""
        if self.best_state_dict is None:
            raise RuntimeError("EarlyStopper.restore_best: no evaluation yet, so there are no best weights")
        extract_model_from_parallel(model).load_state_dict(self.best_state_dict, strict=adapter_model(model) is None)


def to_float(score: Score) -> float:
    if isinstance(score, Tensor):
        if score.numel() != 1:
            raise TypeError(f"EarlyStopper.eval_fn must return a scalar, got a tensor of shape {tuple(score.shape)}")
        return float(score.detach().float().item())
    if isinstance(score, bool) or not isinstance(score, numbers.Real):
        raise TypeError(f"EarlyStopper.eval_fn must return a float, an int or a 0-d tensor, got {type(score).__name__}")
    return float(score)
