"""Numbers to Accelerate's experiment trackers (TensorBoard, Weights & Biases, MLflow, ...).

    SelfRewardingTrainer(model, ..., log_with="tensorboard", project_name="self-rewarding")

The orchestrator initialises the trackers when it starts and closes them when it ends. Each stage logs under
its own prefix (`stage-01-self-reward-dpo/loss`) at a global step that keeps growing across stages and SPIN
iterations, so one run reads as one timeline: a stage's step s is logged at `start_step + s`.
"""

from __future__ import annotations

import numbers

from accelerate import Accelerator


class MetricsLogger:
    """Log rows to `accelerator`'s trackers as `{prefix}/{name}` (just `name` for an empty prefix) at global
    step `start_step + step`. `last_step` is the highest global step logged so far."""

    def __init__(self, accelerator: Accelerator, prefix: str = "", start_step: int = 0):
        self.accelerator = accelerator
        self.prefix = prefix
        self.start_step = self.last_step = start_step

    def log(self, values: dict, step: int | None = None):
        """Log the numbers of `values` (other entries, and `step`, are skipped) at the stage's `step`, or at the
        last global step logged when `step` is None (e.g. an evaluation after the stage's last step)."""
        global_step = self.last_step if step is None else self.start_step + step
        self.last_step = max(self.last_step, global_step)
        numbers_only = {
            f"{self.prefix}/{name}" if self.prefix else name: float(value)
            for name, value in values.items()
            if name != "step" and isinstance(value, numbers.Real) and not isinstance(value, bool)
        }
        if numbers_only:
            self.accelerator.log(numbers_only, step=global_step)

    def resumed_at(self, step: int):
        """A loop resumed at its `step` logged the rows up to it before it was interrupted: they count as logged."""
        self.last_step = max(self.last_step, self.start_step + step)

    def continue_after_last(self):
        """The next rows (e.g. the next SPIN iteration, whose steps count from 1 again) follow the last one."""
        self.start_step = self.last_step


def last_logged(history: list[dict], keys: tuple[str, ...]) -> dict:
    """The last value each of `keys` took in a trainer's logged rows (a key never logged is left out)."""
    last = {}
    for row in history:
        last.update({k: row[k] for k in keys if k in row})
    return last
