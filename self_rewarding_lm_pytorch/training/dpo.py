"""A DPO stage (Rafailov et al. 2023): `DPOConfig` and `DPOTrainer`, the training loop over preference pairs.

The objective is `DPO` (training/dpo_objective.py); pairs become batches in training/dpo_batches.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from accelerate import Accelerator
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from self_rewarding_lm_pytorch.data.config_types import check_field_types
from self_rewarding_lm_pytorch.models.adapters import adapter_model, reference_model
from self_rewarding_lm_pytorch.models.sharding import (
    check_supported_sharding,
    is_fully_sharded,
    place_on_device,
    prepare_for_training,
)
from self_rewarding_lm_pytorch.models.utils import set_dropout
from self_rewarding_lm_pytorch.storage.tracking import MetricsLogger
from self_rewarding_lm_pytorch.training.dpo_batches import DPOCollate, validate_pair_dataset
from self_rewarding_lm_pytorch.training.dpo_objective import DPO, default_logp_reduction
from self_rewarding_lm_pytorch.training.early_stopping import EarlyStopper
from self_rewarding_lm_pytorch.training.logprobs import Reduction
from self_rewarding_lm_pytorch.training.losses import LossType, check_preference_loss_settings
from self_rewarding_lm_pytorch.training.optim import adamw_for_stage, steps_per_epoch
from self_rewarding_lm_pytorch.training.options import TrainingLoopOptions, check_at_least_one
from self_rewarding_lm_pytorch.training.reference import with_reference_logprobs
from self_rewarding_lm_pytorch.training.train_state import (
    TrainState,
    loop_fingerprint,
    shuffle_generator,
    step_is_finite,
)


@dataclass(kw_only=True)
class DPOConfig(TrainingLoopOptions):
    """Settings of a DPO stage. Learning rates follow the paper (1e-6 decayed to 1e-7).

    Length: `num_train_steps` optimizer steps, or `num_epochs` passes over the pairs, or both (whichever ends
    first). One of them is required: it is the hard cap. An `early_stopper` (checked every `early_stop_every`
    steps) can end the stage sooner, and the weights the stage returns are then those of its best evaluation,
    whether it stopped early or reached the cap. The loop and optimiser fields are `TrainingLoopOptions`
    (training/options.py).

    `logp_reduction`: 'sum' is log π(response | prompt) as in the DPO paper; 'mean' (per token) is what TRL uses
    for IPO (the form IPO's authors reported results with). None (the default) picks 'mean' for `loss_type='ipo'`, 'sum' otherwise. Stored
    reference log-probs must use the same. `nll_weight` > 0 adds that weight times the chosen responses' NLL
    averaged over their tokens in the batch (Iterative RPO, Pang et al. 2024, arXiv 2404.19733; in TRL
    `loss_type=["sigmoid", "sft"]` with `loss_weights=[1.0, nll_weight]`): plain DPO on small models often lowers
    the chosen likelihood too. The logged metrics are TRL's, from the summed log-probs whatever the reduction
    (`DPO.summarize`). `dropout` defaults to 0.0 (TRL's `disable_dropout=True`). See docs/differences.md.

    `precompute_reference`: pairs without stored reference log-probs get them in one pass before training, so no
    reference model is held (training/reference.py). None (default): precompute unless the model has LoRA adapters,
    whose reference (adapters off) costs no memory, and always for a sharded model (FSDP2); False: a live
    reference (refused for a sharded model without adapters: it would be a frozen copy).
    """

    beta: float = 0.1
    loss_type: LossType = "sigmoid"
    label_smoothing: float = 0.0
    logp_reduction: Reduction | None = None  # None: 'mean' for IPO, 'sum' otherwise
    nll_weight: float = 0.0
    dropout: float | None = 0.0  # no dropout, as TRL's disable_dropout=True: the reference never drops out
    margin_weighted_loss: bool = False  # weight each pair's loss by its score margin (ScPO); needs pair rewards
    num_epochs: int | None = None  # passes over the pairs
    learning_rate: float = 1e-6
    end_learning_rate: float = 1e-7
    early_stopper: EarlyStopper | None = None
    early_stop_every: int | None = None  # steps between early-stopping evaluations
    precompute_reference: bool | None = None  # pairs without reference log-probs: compute them once up front

    length_fix: ClassVar[str] = (
        "An early_stopper alone is no cap either (the score may keep improving): set num_train_steps or num_epochs "
        "(or both: whichever ends first), and optionally an early_stopper to end sooner"
    )

    def __post_init__(self):
        check_field_types(self)  # before any check compares a field
        self.check_dpo_training()

    def check_dpo_training(self):
        """The loop, the loss and the early stopping; resolves `logp_reduction` None to the loss type's default.
        Every config that trains DPO (this one and the preference stages) runs it from its `__post_init__`."""
        name = type(self).__name__
        self.check_training_loop()
        check_preference_loss_settings(self.beta, self.loss_type, self.label_smoothing, name)
        if self.logp_reduction is None:
            self.logp_reduction = default_logp_reduction(self.loss_type)
        if self.logp_reduction not in ("sum", "mean"):
            raise ValueError(f"{name}.logp_reduction must be 'sum', 'mean' or None (the loss type's default), got "
                             f"{self.logp_reduction!r}")
        if not self.nll_weight >= 0:
            raise ValueError(f"{name}.nll_weight must be >= 0 (0: no NLL term), got {self.nll_weight}")
        if self.precompute_reference not in (None, True, False):
            raise ValueError(f"{name}.precompute_reference must be True, False or None, got {self.precompute_reference!r}")
        check_at_least_one(self, "early_stop_every", optional=True)
        if self.early_stopper is not None:
            if not (callable(self.early_stopper) and hasattr(self.early_stopper, "restore_best")):
                raise TypeError(f"{name}.early_stopper must be an EarlyStopper, got {type(self.early_stopper).__name__}")
            if self.early_stop_every is None:
                raise ValueError(f"{name}.early_stopper needs early_stop_every: the number of steps between its evaluations")
        elif self.early_stop_every is not None:
            raise ValueError(f"{name}.early_stop_every is set but there is no early_stopper: pass one, or leave "
                             f"early_stop_every at None")


class DPOTrainer:
    """Train `model` with DPO on `train_dataset` (a `DPODataset` or any dataset of pair dicts); `trainer()`
    trains and returns the logged rows (one per optimizer step).

    Pass a `DPOConfig`, or its fields as keyword arguments. The reference is the model as it is at the start of
    the stage: the pairs' stored log-probs when the datasets carry them, else log-probs computed here in one pass
    (`precompute_reference`, no reference model is held), else a live reference: `model` with its adapters off
    (LoRA) or a frozen copy. Rows go to the trackers through `logger` (default: prefix `metric_prefix`).
    `pad_id` defaults to the dataset's `pad_id` attribute (a `DPODataset` has one), else -1.

    With `checkpoint_every`, the loop's state is saved to `checkpoint_folder/{checkpoint_prefix}-step-{n}.pt` and a
    rerun resumes from the latest (training/train_state.py) when built with the same settings, pairs and initial
    weights of `model`, and the same `fingerprint_parts` (named digests of what else the result depends on).
    """

    def __init__(
        self,
        model: nn.Module,
        train_dataset: Dataset,
        config: DPOConfig | None = None,
        *,
        valid_dataset: Dataset | None = None,
        pad_id: int | None = None,
        accelerator: Accelerator | None = None,
        accelerate_kwargs: dict | None = None,
        checkpoint_folder: str | Path = "./checkpoints/dpo",
        checkpoint_prefix: str = "dpo",
        metric_prefix: str = "dpo",
        logger: MetricsLogger | None = None,
        fingerprint_parts: dict[str, str] | None = None,
        **config_kwargs,
    ):
        if config is not None and config_kwargs:
            raise TypeError(f"pass either a DPOConfig or its fields, not both (got {sorted(config_kwargs)})")
        self.config = config = config or DPOConfig(**config_kwargs)
        self.accelerator = accelerator or Accelerator(**(accelerate_kwargs or {}))
        check_supported_sharding(self.accelerator, "DPOTrainer")
        self.pad_id = pad_id = getattr(train_dataset, "pad_id", -1) if pad_id is None else pad_id
        self.checkpoint_folder, self.checkpoint_prefix, self.metric_prefix = Path(checkpoint_folder), checkpoint_prefix, metric_prefix
        self.logger = logger or MetricsLogger(self.accelerator, metric_prefix)

        train_has_ref = validate_pair_dataset(train_dataset, pad_id, "DPO train_dataset")
        valid_has_ref = True
        if valid_dataset is not None:
            valid_has_ref = validate_pair_dataset(valid_dataset, pad_id, "DPO valid_dataset")
        elif config.valid_every is not None:
            raise ValueError("DPOConfig.valid_every is set but there is no valid_dataset to evaluate on")

        # a resumed loop must have these settings and pairs (as given: computed reference log-probs may vary in the last
        # bits), start from these weights (before a resume loads any) and match what the caller adds (SPIN's own)
        self.fingerprint = {}
        if config.checkpoint_every:
            self.fingerprint = loop_fingerprint(config, initial_weights=model, train=train_dataset, valid=valid_dataset)
            self.fingerprint.update(pad_id=str(pad_id), **(fingerprint_parts or {}))  # the padding changes the batches

        # the reference, the model as it is now: stored log-probs, log-probs computed now, or a live reference
        self.ref_model = None
        if not (train_has_ref and valid_has_ref):
            precompute = config.precompute_reference
            if precompute is None:  # a frozen copy would be held otherwise; a sharded model cannot have one
                precompute = adapter_model(model) is None or is_fully_sharded(model)
            if not precompute and is_fully_sharded(model) and adapter_model(model) is None:
                raise ValueError(
                    "DPOTrainer: the model is sharded (FSDP2), the pairs carry no reference log-probs and "
                    "DPOConfig.precompute_reference is False, so a frozen copy of the model would be the reference; "
                    "that copy is not supported for a sharded model. Leave precompute_reference at None (or True) "
                    "to compute the reference log-probs before training, or store them with the pairs "
                    "(chosen_ref_logp / rejected_ref_logp), as pair generation and SPIN do"
                )
            if precompute:
                place_on_device(self.accelerator, model)
                reference = dict(accelerator=self.accelerator, pad_id=pad_id, reduction=config.logp_reduction,
                                 batch_size=config.batch_size)
                if not train_has_ref:
                    train_dataset = with_reference_logprobs(model, train_dataset, **reference,
                                                            desc=f"{self.metric_prefix} reference log-probs")
                if valid_dataset is not None and not valid_has_ref:
                    valid_dataset = with_reference_logprobs(model, valid_dataset, **reference,
                                                            desc=f"{self.metric_prefix} reference log-probs (valid)")
            else:
                self.ref_model = reference_model(model).to(self.accelerator.device)

        collate = DPOCollate(pad_id, margin_weights=config.margin_weighted_loss)
        train_loader = DataLoader(train_dataset, batch_size=config.batch_size, shuffle=True, drop_last=False, collate_fn=collate,
                                  generator=shuffle_generator())
        self.valid_loader = None
        if valid_dataset is not None:
            self.valid_loader = DataLoader(valid_dataset, batch_size=config.batch_size, collate_fn=collate)

        # the shorter of the two caps
        epoch_steps = steps_per_epoch(len(train_dataset), batch_size=config.batch_size,
                                      num_processes=self.accelerator.num_processes, grad_accum_steps=config.grad_accum_steps)
        caps = [config.num_train_steps, config.num_epochs and epoch_steps * config.num_epochs]
        self.num_train_steps = min(c for c in caps if c)

        if config.dropout is not None:
            set_dropout(model, config.dropout)
        optimizer, self.scheduler = adamw_for_stage(model, config, self.num_train_steps)
        # the scheduler is stepped by hand once per optimizer step: Accelerate's wrapper would step it once per process
        self.model, self.optimizer, self.train_loader = prepare_for_training(self.accelerator, model, optimizer, train_loader)
        if self.valid_loader is not None:
            self.valid_loader = self.accelerator.prepare(self.valid_loader)

        self.dpo = DPO(
            self.model, config.beta,
            ref_model=self.ref_model, precomputed_reference=self.ref_model is None,
            loss_type=config.loss_type, label_smoothing=config.label_smoothing,
            logp_reduction=config.logp_reduction, nll_weight=config.nll_weight, pad_id=pad_id,
        )
        self.history: list[dict] = []

    @torch.no_grad()
    def valid_metrics(self) -> dict[str, float]:
        """DPO metrics over the whole validation set, each pair counted once across processes
        (`gather_for_metrics` drops the pairs Accelerate repeats to even out the last batch)."""
        was_training = self.dpo.training
        self.dpo.eval()
        parts: dict[str, list[Tensor]] = {}
        for batch in self.valid_loader:
            with self.accelerator.autocast():
                values = self.accelerator.gather_for_metrics(self.dpo.pair_values(**batch))
            for name, value in values.items():
                parts.setdefault(name, []).append(value.detach().float())
        self.dpo.train(was_training)
        metrics = self.dpo.summarize({name: torch.cat(value) for name, value in parts.items()})
        return {name: value.item() for name, value in metrics.items()}

    def reduce_metrics(self, micro_metrics: list[dict[str, Tensor]]) -> dict[str, float]:
        """Mean over the micro-batches of an optimizer step and over processes, in one all-reduce."""
        names = list(micro_metrics[0])
        stacked = torch.stack([torch.stack([m[name].float() for name in names]) for m in micro_metrics]).mean(dim=0)
        return dict(zip(names, self.accelerator.reduce(stacked, "mean").tolist()))

    def log(self, row: dict):
        self.history.append(row)
        self.logger.log(row, step=row["step"])

    def train(self) -> list[dict]:
        accelerator, config = self.accelerator, self.config
        stopper = config.early_stopper
        accelerator.gradient_accumulation_steps = config.grad_accum_steps
        self.dpo.train()
        if stopper is not None:
            stopper.reset()  # a stopper may be shared by several stages
        stopper_steps: list[int] = []  # the step of each of the stopper's evaluations

        name = self.metric_prefix if self.checkpoint_prefix == self.metric_prefix else f"{self.metric_prefix} {self.checkpoint_prefix}"
        state = TrainState(accelerator, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                           loader=self.train_loader, folder=self.checkpoint_folder, prefix=self.checkpoint_prefix,
                           every=config.checkpoint_every, name=name, fingerprint=self.fingerprint)
        saved = state.resume()
        step, done = (saved["step"], saved["finished"]) if saved else (0, False)
        self.history = saved["history"] if saved else []
        self.logger.resumed_at(step)  # the rows up to `step` reached the trackers before the interruption
        if saved and stopper is not None:
            stopper.load_state_dict(saved["stopper"])
            stopper_steps = saved["stopper_steps"]

        progress = tqdm(total=self.num_train_steps, initial=step, desc=self.metric_prefix,
                        disable=not accelerator.is_local_main_process)
        if done and step < self.num_train_steps and accelerator.is_main_process:  # the bar halts where the saved run did
            progress.write(f"{name}: the saved state stopped early at step {step} (early stopping); nothing left to train")
        micro_metrics, micro_losses = [], []

        while not done:
            for batch in state.batches():
                # 1) forward and backward one micro-batch; Accelerate syncs and divides by grad_accum_steps
                with accelerator.accumulate(self.model):
                    with accelerator.autocast():  # the reference too, under mixed precision
                        loss, metrics = self.dpo(**batch)
                    accelerator.backward(loss)
                    micro_losses.append(loss.detach())
                    finite = True
                    if accelerator.sync_gradients:  # NaN/inf stops here, before it reaches the weights
                        grad_norm = accelerator.clip_grad_norm_(self.model.parameters(), config.max_grad_norm or math.inf)
                        finite = step_is_finite(accelerator, micro_losses, grad_norm, name=name, step=step + 1,
                                                skip=config.skip_nonfinite_steps, last_save=state.describe_last_save())
                        micro_losses = []
                    if finite:
                        self.optimizer.step()
                    self.optimizer.zero_grad()
                micro_metrics.append(metrics)

                if not accelerator.sync_gradients:
                    continue

                # 2) an optimizer step happened
                step += 1
                self.scheduler.step()
                row = dict(step=step, **self.reduce_metrics(micro_metrics), lr=self.scheduler.get_last_lr()[0])
                micro_metrics = []
                done = step >= self.num_train_steps

                # 3) early stopping every early_stop_every steps; the stage ends on the best weights evaluated
                if stopper is not None and (step % config.early_stop_every == 0 or done):
                    stopped_early = stopper(self.model, accelerator) and not done
                    done = done or stopped_early
                    stopper_steps.append(step)
                    row["early_stop_score"] = stopper.scores[-1]
                    if done:
                        stopper.restore_best(self.model)
                        row["best_step"] = stopper_steps[stopper.best_index]
                        if accelerator.is_main_process:  # the bar halts: say why, and which weights stay
                            progress.write(early_stop_reason(stopper, step, row["best_step"], stopped_early, self.metric_prefix))

                # 4) validation every valid_every steps, and at the end (of the weights the stage returns)
                if self.valid_loader is not None and (done or (config.valid_every and step % config.valid_every == 0)):
                    row.update({f"valid_{k}": v for k, v in self.valid_metrics().items()})

                self.log(row)
                progress.update(1)
                progress.set_postfix({k: f"{row[k]:.4g}" for k in ("loss", "rewards/accuracies", "rewards/margins")})

                # 5) resumable state every checkpoint_every steps, and at the end
                stopper_state = dict(stopper=stopper.state_dict(), stopper_steps=stopper_steps) if stopper else {}
                state.save_if_due(step, history=self.history, finished=done, **stopper_state)

                if done:
                    break

        progress.close()
        return self.history

    __call__ = train


def early_stop_reason(stopper: EarlyStopper, step: int, best_step: int, stopped_early: bool, name: str) -> str:
    """One line saying why training ended and which weights it kept."""
    best = f"best score {stopper.best_score:.4g} ({stopper.mode}) at step {best_step}, whose weights are restored"
    if stopped_early:
        return (f"{name}: early stop at step {step}: the score did not improve by more than {stopper.min_delta:g} in "
                f"{stopper.patience} evaluations (patience); {best}")
    return f"{name}: reached its last step {step}; {best}"
