"""AdamW with linear warmup then linear decay, the schedule of the paper (e.g. SFT 5.5e-6 -> 1.1e-6)."""

from __future__ import annotations

import math

from torch import nn
from torch.optim import AdamW
from torch.optim.lr_scheduler import LambdaLR

from self_rewarding_lm_pytorch.models.sharding import reshard


def linear_warmup_decay(
    step: int, *, warmup_steps: int, decay_steps: int | None, start_lr: float, end_lr: float
) -> float:
    """Multiplier of `start_lr` after `step` optimizer steps: 0 -> 1 over warmup, then 1 -> end/start over
    `decay_steps`, then constant. With no `decay_steps` (training length unknown) the rate stays at start."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if not decay_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return 1.0 - progress * (1.0 - end_lr / start_lr)


def adamw_with_schedule(
    model: nn.Module,
    *,
    learning_rate: float,
    end_learning_rate: float,
    warmup_steps: int,
    total_steps: int | None,
    weight_decay: float,
    adam_kwargs: dict | None = None,
) -> tuple[AdamW, LambdaLR]:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = AdamW(params, lr=learning_rate, weight_decay=weight_decay, **(adam_kwargs or {}))
    decay_steps = None if total_steps is None else max(1, total_steps - warmup_steps)
    scheduler = LambdaLR(
        optimizer,
        lambda step: linear_warmup_decay(
            step, warmup_steps=warmup_steps, decay_steps=decay_steps, start_lr=learning_rate, end_lr=end_learning_rate
        ),
    )
    return optimizer, scheduler


def steps_per_epoch(num_examples: int, *, batch_size: int, num_processes: int, grad_accum_steps: int) -> int:
    """Optimizer steps in one pass over the data: one per `grad_accum_steps` micro-batches of each process."""
    batches = math.ceil(num_examples / (batch_size * num_processes))
    return math.ceil(batches / grad_accum_steps)


def adamw_for_stage(model: nn.Module, config, total_steps: int) -> tuple[AdamW, LambdaLR]:
    """`adamw_with_schedule` from a stage config's learning_rate, end_learning_rate, warmup_steps, weight_decay
    and adam_kwargs. A sharded model is resharded first: the optimizer must hold its shards (sharding.reshard)."""
    reshard(model)
    return adamw_with_schedule(
        model,
        learning_rate=config.learning_rate,
        end_learning_rate=config.end_learning_rate,
        warmup_steps=config.warmup_steps,
        total_steps=total_steps,
        weight_decay=config.weight_decay,
        adam_kwargs=config.adam_kwargs,
    )
