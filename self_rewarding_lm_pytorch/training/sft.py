"""Supervised fine-tuning: cross-entropy on response tokens only (the paper's IFT and EFT seed data)."""

from __future__ import annotations

import math
from dataclasses import KW_ONLY, dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from self_rewarding_lm_pytorch.data.config_types import check_field_types
from self_rewarding_lm_pytorch.data.datasets import SFTCollate, validate_sft_dataset
from self_rewarding_lm_pytorch.models.contract import forward_logits
from self_rewarding_lm_pytorch.models.sharding import check_supported_sharding, prepare_for_training
from self_rewarding_lm_pytorch.models.utils import set_dropout
from self_rewarding_lm_pytorch.storage.tracking import MetricsLogger
from self_rewarding_lm_pytorch.training.logprobs import response_mask, token_logprobs
from self_rewarding_lm_pytorch.training.optim import adamw_for_stage, steps_per_epoch
from self_rewarding_lm_pytorch.training.options import TrainingLoopOptions, check_at_least_one
from self_rewarding_lm_pytorch.training.train_state import (
    TrainState,
    loop_fingerprint,
    shuffle_generator,
    step_is_finite,
)


@dataclass
class SFTConfig(TrainingLoopOptions):
    """Settings of a supervised fine-tuning stage. Learning rates follow the paper (5.5e-6 decayed to 1.1e-6).

    Length: `num_epochs` passes over `train_dataset`, or `num_train_steps` optimizer steps when given. The loop
    and optimiser fields are `TrainingLoopOptions` (training/options.py); `valid_every` needs a `valid_dataset`.
    """

    train_dataset: Dataset
    valid_dataset: Dataset | None = None
    _: KW_ONLY  # the datasets may be positional, every other field is a keyword
    valid_batch_size: int | None = None  # None: batch_size
    grad_accum_steps: int = 2
    num_epochs: int | None = 1
    learning_rate: float = 5.5e-6
    end_learning_rate: float = 1.1e-6

    def __post_init__(self):
        check_field_types(self)  # before any check compares a field
        self.check_training_loop()
        check_at_least_one(self, "valid_batch_size", optional=True)
        if self.valid_every is not None and self.valid_dataset is None:
            raise ValueError("SFTConfig.valid_every is set but there is no valid_dataset to evaluate on: pass a "
                             "valid_dataset, or leave valid_every at None")


def sft_nll(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Per row: summed negative log-likelihood of the response tokens, and their count."""
    seq = batch["seq"]
    mask = response_mask(seq, batch["prompt_len"], batch["is_padding"])
    logits = forward_logits(model, seq.clamp(min=0))
    scored = mask[:, 1:]  # token t is predicted at t - 1: the mask shifts with the labels
    nll = -(token_logprobs(logits, seq) * scored).sum(dim=-1)
    return nll, scored.sum(dim=-1)


class SFTTrainer:
    """Fine-tune `model` on `(seq, prompt_len)` examples; `trainer()` trains and returns the logged rows.

    Pass an `SFTConfig`, or its fields as keyword arguments. With `checkpoint_every`, the loop's state is saved
    to `checkpoint_folder/sft-step-{n}.pt` and a rerun resumes from the latest (training/train_state.py) when built
    with the same settings, data and initial weights of `model`. Rows go to the trackers through `logger` (default:
    prefix `sft`, steps from 1).
    """

    def __init__(
        self,
        model: nn.Module,
        config: SFTConfig | None = None,
        *,
        pad_id: int = -1,
        accelerator: Accelerator | None = None,
        accelerate_kwargs: dict | None = None,
        checkpoint_folder: str | Path = "./checkpoints/sft",
        logger: MetricsLogger | None = None,
        **config_kwargs,
    ):
        if config is not None and config_kwargs:
            raise TypeError(f"pass either an SFTConfig or its fields, not both (got {sorted(config_kwargs)})")
        self.checkpoint_folder = Path(checkpoint_folder)
        self.config = config = config or SFTConfig(**config_kwargs)
        self.accelerator = accelerator or Accelerator(**(accelerate_kwargs or {}))
        check_supported_sharding(self.accelerator, "SFTTrainer")
        self.pad_id = pad_id
        self.logger = logger or MetricsLogger(self.accelerator, "sft")

        validate_sft_dataset(config.train_dataset, pad_id, "SFT train_dataset")
        if config.valid_dataset is not None:
            validate_sft_dataset(config.valid_dataset, pad_id, "SFT valid_dataset")

        # a resumed loop must have these settings and data, and start from these weights (before a resume loads any)
        self.fingerprint = {}
        if config.checkpoint_every:  # the padding id changes the batches: part of what a save must match
            self.fingerprint = dict(loop_fingerprint(config, initial_weights=model), pad_id=str(pad_id))

        collate = SFTCollate(pad_id)
        train_loader = DataLoader(config.train_dataset, batch_size=config.batch_size, shuffle=True, drop_last=False, collate_fn=collate,
                                  generator=shuffle_generator())
        self.valid_loader = None
        if config.valid_dataset is not None:
            self.valid_loader = DataLoader(
                config.valid_dataset, batch_size=config.valid_batch_size or config.batch_size, collate_fn=collate
            )

        epoch_steps = steps_per_epoch(len(config.train_dataset), batch_size=config.batch_size,
                                      num_processes=self.accelerator.num_processes, grad_accum_steps=config.grad_accum_steps)
        self.num_train_steps = config.num_train_steps or epoch_steps * config.num_epochs

        if config.dropout is not None:  # None (the default): the model's own rates, as TRL's SFTTrainer
            set_dropout(model, config.dropout)
        optimizer, self.scheduler = adamw_for_stage(model, config, self.num_train_steps)
        # the scheduler is stepped by hand once per optimizer step: Accelerate's wrapper would step it once per process
        self.model, self.optimizer, self.train_loader = prepare_for_training(self.accelerator, model, optimizer, train_loader)
        if self.valid_loader is not None:
            self.valid_loader = self.accelerator.prepare(self.valid_loader)

        self.history: list[dict] = []

    @torch.no_grad()
    def valid_loss(self) -> float:
        """Mean response-token NLL over the whole validation set, each example counted once across processes
        (`gather_for_metrics` drops the samples Accelerate repeats to even out the last batch)."""
        self.model.eval()
        total_nll = total_tokens = 0.0
        for batch in self.valid_loader:
            nll, tokens = self.accelerator.gather_for_metrics(sft_nll(self.model, batch))
            total_nll += nll.sum().item()
            total_tokens += tokens.sum().item()
        self.model.train()
        return total_nll / max(total_tokens, 1)

    def log(self, row: dict):
        self.history.append(row)
        self.logger.log(row, step=row["step"])

    def train(self) -> list[dict]:
        accelerator, config = self.accelerator, self.config
        accelerator.gradient_accumulation_steps = config.grad_accum_steps
        self.model.train()

        state = TrainState(accelerator, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                           loader=self.train_loader, folder=self.checkpoint_folder, prefix="sft",
                           every=config.checkpoint_every, name="sft",
                           fingerprint=self.fingerprint)
        saved = state.resume()
        step = saved["step"] if saved else 0
        self.history = saved["history"] if saved else []
        self.logger.resumed_at(step)  # the rows up to `step` reached the trackers before the interruption
        progress = tqdm(total=self.num_train_steps, initial=step, desc="sft", disable=not accelerator.is_local_main_process)
        micro_losses = []

        while step < self.num_train_steps:
            for batch in state.batches():
                # 1) forward and backward one micro-batch; Accelerate syncs and divides by grad_accum_steps
                with accelerator.accumulate(self.model):
                    nll, tokens = sft_nll(self.model, batch)
                    loss = nll.sum() / tokens.sum().clamp(min=1)
                    accelerator.backward(loss)
                    micro_losses.append(loss.detach())
                    finite = True
                    if accelerator.sync_gradients:  # NaN/inf stops here, before it reaches the weights
                        grad_norm = accelerator.clip_grad_norm_(self.model.parameters(), config.max_grad_norm or math.inf)
                        finite = step_is_finite(accelerator, micro_losses, grad_norm, name="sft", step=step + 1,
                                                skip=config.skip_nonfinite_steps, last_save=state.describe_last_save())
                    if finite:
                        self.optimizer.step()
                    self.optimizer.zero_grad()

                if not accelerator.sync_gradients:
                    continue

                # 2) an optimizer step happened
                step += 1
                self.scheduler.step()
                row = dict(step=step, loss=accelerator.reduce(torch.stack(micro_losses).mean(), "mean").item(),
                           lr=self.scheduler.get_last_lr()[0])
                micro_losses = []

                # 3) validation every valid_every steps, and at the end
                if self.valid_loader is not None and (
                    step == self.num_train_steps or (config.valid_every and step % config.valid_every == 0)
                ):
                    row["valid_loss"] = self.valid_loss()

                self.log(row)
                progress.update(1)
                progress.set_postfix({k: f"{v:.4g}" for k, v in row.items() if k != "step"})

                # 4) resumable state every checkpoint_every steps, and at the end
                state.save_if_due(step, history=self.history, finished=step >= self.num_train_steps)

                if step >= self.num_train_steps:
                    break

        progress.close()
        return self.history

    __call__ = train
