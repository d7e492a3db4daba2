"""Option groups that several stage configs share, each declared once with one check.

`TrainingLoopOptions` holds the loop and optimiser settings of SFT (`SFTConfig`), SPIN (`SelfPlayConfig`) and
DPO (`DPOConfig`, and through it every preference stage). A stage config subclasses it and redeclares only the
defaults that differ; the learning rates and the length (`num_epochs`) have no default here, so every stage
states its own. Each concrete config calls `check_training_loop()` from its one `__post_init__`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar

# what a stage's `name` may be: it is part of the stage's file names (`stage-00-<name>.pt`, `.pairs/`, `.hf/`)
STAGE_NAME = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")


def check_at_least_one(config, *names: str, optional: bool = False):
    """Raise ValueError unless each named field of `config` is >= 1 (or None, when `optional`)."""
    for name in names:
        value = getattr(config, name)
        if optional and value is None:
            continue
        if value is None or value < 1:
            raise ValueError(f"{type(config).__name__}.{name} must be >= 1{' or None' if optional else ''}, got {value}")


@dataclass(kw_only=True)
class TrainingLoopOptions:
    """The training loop and its optimiser (AdamW, linear warmup then linear decay: training/optim.py).

    Length: `num_train_steps` optimizer steps or `num_epochs` passes over the data (how a stage combines the two
    is in its own docstring); at least one of them is set. The learning rate decays linearly from `learning_rate`
    to `end_learning_rate` over the stage, after `warmup_steps` of linear warmup.

    `dropout` sets every dropout rate of the model for the stage (and after it); None leaves the model's own. The
    defaults follow TRL: SFT leaves the model's rates (TRL's SFTTrainer does not change them), DPO and SPIN train
    without dropout (TRL's `DPOConfig.disable_dropout=True`), so the policy and its reference, which never drops
    out, score the same sequence alike.
    """

    batch_size: int = 16
    grad_accum_steps: int = 1
    num_train_steps: int | None = None  # optimizer steps
    num_epochs: int | None  # passes over the data
    learning_rate: float
    end_learning_rate: float | None
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0  # None: no clipping
    adam_kwargs: dict = field(default_factory=dict)  # passed on to torch.optim.AdamW, e.g. dict(betas=(0.9, 0.95))
    dropout: float | None = None  # every dropout rate of the model during the stage; None: the model's own rates
    valid_every: int | None = None  # steps between validation metrics; None: only at the end
    checkpoint_every: int | None = None  # optimizer steps between resumable saves (training/train_state.py); None: none
    skip_nonfinite_steps: bool = False  # a NaN/inf loss or gradient skips that update instead of stopping
    # part of the stage's fingerprint: change it to mark a change the fingerprint cannot see (docs/fingerprint.md)
    fingerprint_salt: str = ""
    # what the stage's files are called after its index, e.g. "judge-training": `stage-01-judge-training.pt`.
    # None: the stage's kind (`stage-01-sft.pt`). Part of the stage's identity: a renamed stage is a new stage
    name: str | None = None

    # a stage that reads end_learning_rate None as a constant rate says so
    constant_rate_when_no_end: ClassVar[bool] = False
    # how to give the stage a length, for the error when neither num_train_steps nor num_epochs is set
    length_fix: ClassVar[str] = "Set num_epochs, or num_train_steps (which replaces num_epochs when given)"

    def check_training_loop(self):
        """Raise ValueError, naming the config, the field and the fix, for loop settings the stage cannot run."""
        name = type(self).__name__
        check_at_least_one(self, "batch_size", "grad_accum_steps")
        check_at_least_one(self, "num_train_steps", "num_epochs", "valid_every", "checkpoint_every", optional=True)
        if self.num_train_steps is None and self.num_epochs is None:
            raise ValueError(f"{name} has neither num_train_steps nor num_epochs, so training would never end. "
                             f"{self.length_fix}")
        if not self.learning_rate > 0:
            raise ValueError(f"{name}.learning_rate must be > 0, got {self.learning_rate}")
        if self.end_learning_rate is None:
            if not self.constant_rate_when_no_end:
                raise ValueError(f"{name}.end_learning_rate must be a number; for a constant rate set it to "
                                 f"learning_rate ({self.learning_rate})")
        elif not 0 < self.end_learning_rate <= self.learning_rate:
            raise ValueError(
                f"{name} needs 0 < end_learning_rate <= learning_rate, got {self.end_learning_rate} and "
                f"{self.learning_rate}: the rate decays from learning_rate to end_learning_rate"
            )
        if self.name is not None and (not isinstance(self.name, str) or not STAGE_NAME.fullmatch(self.name)
                                      or len(self.name) > 64):
            raise ValueError(f"{name}.name is part of the stage's file names: lower-case letters and digits in words "
                             f"joined by single hyphens, at most 64 characters (e.g. 'judge-training'), or None for "
                             f"the stage's kind; got {self.name!r}")
        for field_name in ("warmup_steps", "weight_decay"):
            if getattr(self, field_name) < 0:
                raise ValueError(f"{name}.{field_name} must be >= 0, got {getattr(self, field_name)}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"{name}.max_grad_norm must be > 0 or None (no clipping), got {self.max_grad_norm}")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise ValueError(f"{name}.dropout must be in [0, 1), or None (the model's own rates), got {self.dropout}")
        if not isinstance(self.fingerprint_salt, str):
            raise TypeError(f"{name}.fingerprint_salt must be a str (e.g. 'reward-v2'), got a "
                            f"{type(self.fingerprint_salt).__name__}: {self.fingerprint_salt!r}")
        if not isinstance(self.adam_kwargs, dict):
            raise TypeError(f"{name}.adam_kwargs must be a dict of AdamW keyword arguments, got a "
                            f"{type(self.adam_kwargs).__name__}")
