"""Direct Preference Optimization (Rafailov et al. 2023) on (chosen, rejected) pairs.

`DPO` turns a batch of pairs into the loss: one policy forward over chosen and rejected stacked along the
batch, the reference log-probs either stored with the pairs (computed by the model that generated them) or
from a frozen copy of the policy, then the shared preference loss (preference_loss.py). `DPOTrainer` is the
training loop of a DPO stage, configured by `DPOConfig`.

A pair is a dict: `chosen`, `rejected` (prompt + response token ids, 1-D, possibly right-padded with pad_id),
`prompt_len`, and optionally `chosen_ref_logp`, `rejected_ref_logp` (log π_ref(response | prompt)), as
`DPODataset` (preference_data.py) yields them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import extract_model_from_parallel
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from self_rewarding_lm_pytorch.checkpoint import save_checkpoint
from self_rewarding_lm_pytorch.data import as_token_tensor, check_non_empty, pad_right, strip_right_padding
from self_rewarding_lm_pytorch.early_stopping import EarlyStopper
from self_rewarding_lm_pytorch.logprobs import Reduction, model_sequence_logprobs, reference_logprobs, response_mask
from self_rewarding_lm_pytorch.model_utils import frozen_copy, set_dropout
from self_rewarding_lm_pytorch.optim import adamw_for_stage, steps_per_epoch
from self_rewarding_lm_pytorch.preference_loss import LossType, check_preference_loss_settings, preference_loss

__all__ = ["DPO", "DPOCollate", "DPOConfig", "DPOTrainer", "reference_logprobs"]

REF_KEYS = ("chosen_ref_logp", "rejected_ref_logp")


@dataclass(kw_only=True)
class DPOConfig:
    """Settings of a DPO stage. Learning rates follow the paper (1e-6 decayed to 1e-7).

    Length: `num_train_steps` optimizer steps, or `num_epochs` passes over the pairs, or both (whichever ends
    first). One of them is required: it is the hard cap. An `early_stopper` (checked every `early_stop_every`
    steps) can end the stage sooner, and the weights the stage returns are then those of its best evaluation,
    whether it stopped early or reached the cap.

    `logp_reduction`: 'sum' is log π(response | prompt) as in the DPO paper; 'mean' (per token) was the
    original library's behaviour and is what IPO's paper uses. Stored reference log-probs must use the same.
    `nll_weight` > 0 adds that weight times the chosen responses' per-token NLL to the loss (Iterative RPO,
    Pang et al. 2024, arXiv 2404.19733): plain DPO on small models often lowers the chosen likelihood too.
    """

    beta: float = 0.1
    loss_type: LossType = "sigmoid"
    label_smoothing: float = 0.0
    logp_reduction: Reduction = "sum"
    nll_weight: float = 0.0
    batch_size: int = 16
    grad_accum_steps: int = 1
    num_train_steps: int | None = None  # optimizer steps
    num_epochs: int | None = None  # passes over the pairs
    learning_rate: float = 1e-6
    end_learning_rate: float = 1e-7
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    adam_kwargs: dict = field(default_factory=dict)
    dropout: float = 0.1
    valid_every: int | None = None  # steps between validation metrics; None: only at the end
    early_stopper: EarlyStopper | None = None
    early_stop_every: int | None = None  # steps between early-stopping evaluations
    checkpoint_every: int | None = None  # steps between checkpoints; None: none

    def __post_init__(self):
        name = type(self).__name__
        check_preference_loss_settings(self.beta, self.loss_type, self.label_smoothing, name)
        if self.logp_reduction not in ("sum", "mean"):
            raise ValueError(f"{name}.logp_reduction must be 'sum' or 'mean', got {self.logp_reduction!r}")
        if not self.nll_weight >= 0:
            raise ValueError(f"{name}.nll_weight must be >= 0, got {self.nll_weight}")
        for field_name in ("batch_size", "grad_accum_steps"):
            if getattr(self, field_name) < 1:
                raise ValueError(f"{name}.{field_name} must be >= 1, got {getattr(self, field_name)}")
        for field_name in ("num_train_steps", "num_epochs", "valid_every", "early_stop_every", "checkpoint_every"):
            value = getattr(self, field_name)
            if value is not None and value < 1:
                raise ValueError(f"{name}.{field_name} must be >= 1 or None, got {value}")
        if self.num_train_steps is None and self.num_epochs is None:
            raise ValueError(
                f"{name} has neither num_train_steps nor num_epochs, so training would never end; an early_stopper "
                f"alone is no cap either (the score may keep improving). Set num_train_steps or num_epochs (or both: "
                f"whichever ends first), and optionally an early_stopper to end sooner."
            )
        if not 0 < self.end_learning_rate <= self.learning_rate:
            raise ValueError(
                f"{name} needs 0 < end_learning_rate <= learning_rate, got {self.end_learning_rate} and {self.learning_rate}"
            )
        if self.warmup_steps < 0 or self.weight_decay < 0:
            raise ValueError(f"{name}.warmup_steps and weight_decay must be >= 0, got {self.warmup_steps}, {self.weight_decay}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"{name}.max_grad_norm must be > 0 or None, got {self.max_grad_norm}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"{name}.dropout must be in [0, 1), got {self.dropout}")
        if self.early_stopper is not None:
            if not (callable(self.early_stopper) and hasattr(self.early_stopper, "restore_best")):
                raise TypeError(f"{name}.early_stopper must be an EarlyStopper, got {type(self.early_stopper).__name__}")
            if self.early_stop_every is None:
                raise ValueError(f"{name}.early_stopper needs early_stop_every: the number of steps between its evaluations")
        elif self.early_stop_every is not None:
            raise ValueError(f"{name}.early_stop_every is set but there is no early_stopper")


def trailing_padding(seq: Tensor, pad_id: int) -> Tensor:
    """True at the run of `pad_id` that ends each row (the right padding); a pad id before a real token is a token."""
    positions = torch.arange(seq.shape[-1], device=seq.device)
    length = ((seq != pad_id) * (positions + 1)).amax(dim=-1)  # index of the last real token + 1
    return positions[None, :] >= length[:, None]


class DPO(nn.Module):
    """The DPO loss of a policy `model` on (chosen, rejected) pairs.

    The reference is a frozen copy of `model` made here (or `ref_model` when given); with
    `precomputed_reference=True` no reference model is held and every call must pass the reference log-probs.
    Sequences are prompt + response, right-padded with `pad_id`.
    """

    def __init__(
        self,
        model: nn.Module,
        beta: float = 0.1,
        *,
        ref_model: nn.Module | None = None,
        precomputed_reference: bool = False,
        loss_type: LossType = "sigmoid",
        label_smoothing: float = 0.0,
        logp_reduction: Reduction = "sum",
        nll_weight: float = 0.0,
        pad_id: int = -1,
    ):
        super().__init__()
        check_preference_loss_settings(beta, loss_type, label_smoothing, type(self).__name__)
        if logp_reduction not in ("sum", "mean"):
            raise ValueError(f"{type(self).__name__}: logp_reduction must be 'sum' or 'mean', got {logp_reduction!r}")
        if not nll_weight >= 0:
            raise ValueError(f"{type(self).__name__}: nll_weight must be >= 0, got {nll_weight}")
        self.model = model
        self.beta, self.loss_type, self.label_smoothing = beta, loss_type, label_smoothing
        self.logp_reduction, self.nll_weight, self.pad_id = logp_reduction, nll_weight, pad_id

        if precomputed_reference:
            if ref_model is not None:
                raise ValueError("DPO: precomputed_reference=True holds no reference model, so ref_model must be None")
            self.ref_model = None
        else:
            self.ref_model = frozen_copy(model) if ref_model is None else ref_model.eval().requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.ref_model is not None:
            self.ref_model.eval()  # the reference never drops out
        return self

    def pair_values(
        self,
        chosen: Tensor,
        rejected: Tensor,
        prompt_len: Tensor,
        chosen_ref_logp: Tensor | None = None,
        rejected_ref_logp: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Per pair (b,): `loss` (the preference loss plus the weighted NLL), `chosen_rewards`, `rejected_rewards`,
        `chosen_logps`, `rejected_logps` (policy) and `nll` (per-token NLL of the chosen response)."""
        if (chosen_ref_logp is None) != (rejected_ref_logp is None):
            raise ValueError("DPO: pass both chosen_ref_logp and rejected_ref_logp, or neither")
        if chosen_ref_logp is None and self.ref_model is None:
            raise ValueError(
                "DPO holds no reference model (precomputed_reference=True): pass chosen_ref_logp and rejected_ref_logp"
            )
        batch = chosen.shape[0]

        # 1) chosen rows then rejected rows, right-padded to one length: one forward of the policy for both
        length = max(chosen.shape[-1], rejected.shape[-1])
        seq = torch.cat([nn.functional.pad(s, (0, length - s.shape[-1]), value=self.pad_id) for s in (chosen, rejected)])
        prompt_lens = torch.cat([prompt_len, prompt_len])
        mask = response_mask(seq, prompt_lens, trailing_padding(seq, self.pad_id))

        # 2) log π(response | prompt) under the reference, then the policy (the reference first: its activations
        #    are freed before the policy's graph is built, so peak memory is one forward's, not two)
        if chosen_ref_logp is not None:
            ref_logps = torch.cat([chosen_ref_logp, rejected_ref_logp])
        else:
            with torch.no_grad():
                ref_logps = model_sequence_logprobs(self.ref_model, seq, mask, self.logp_reduction)
        logps = model_sequence_logprobs(self.model, seq, mask, self.logp_reduction)
        ref_logps = ref_logps.to(logps)

        # 3) the preference loss, plus the NLL of the chosen responses per token (RPO)
        losses, chosen_rewards, rejected_rewards = preference_loss(
            logps[:batch], logps[batch:], ref_logps[:batch], ref_logps[batch:],
            beta=self.beta, loss_type=self.loss_type, label_smoothing=self.label_smoothing,
        )
        chosen_logps = logps[:batch]
        if self.logp_reduction == "sum":
            nll = -chosen_logps / mask[:batch, 1:].sum(dim=-1).clamp(min=1)
        else:
            nll = -chosen_logps
        if self.nll_weight > 0:
            losses = losses + self.nll_weight * nll

        return dict(
            loss=losses, chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards,
            chosen_logps=chosen_logps.detach(), rejected_logps=logps[batch:].detach(), nll=nll.detach(),
        )

    def summarize(self, values: dict[str, Tensor]) -> dict[str, Tensor]:
        """Batch metrics (detached 0-d tensors) from `pair_values`."""
        chosen, rejected = values["chosen_rewards"], values["rejected_rewards"]
        metrics = {
            "loss": values["loss"].detach().mean(),
            "rewards/chosen": chosen.mean(),
            "rewards/rejected": rejected.mean(),
            "rewards/accuracies": (chosen > rejected).float().mean(),
            "rewards/margins": (chosen - rejected).mean(),
            "logps/chosen": values["chosen_logps"].mean(),
            "logps/rejected": values["rejected_logps"].mean(),
        }
        if self.nll_weight > 0:
            metrics["nll"] = values["nll"].mean()
        return metrics

    def forward(
        self,
        chosen: Tensor,
        rejected: Tensor,
        prompt_len: Tensor,
        chosen_ref_logp: Tensor | None = None,
        rejected_ref_logp: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """(loss, metrics) of a batch: chosen, rejected (b, n), prompt_len (b,), optional reference log-probs (b,)."""
        values = self.pair_values(chosen, rejected, prompt_len, chosen_ref_logp, rejected_ref_logp)
        return values["loss"].mean(), self.summarize(values)


# data: pairs as dicts, checked once at construction and padded per batch

def normalize_pair(item, pad_id: int, what: str) -> dict:
    """`item` with `chosen`, `rejected` as 1-D token tensors without padding and `prompt_len` an int; raise if malformed."""
    if not isinstance(item, Mapping):
        raise ValueError(f"{what} must be a dict with chosen, rejected and prompt_len, got {type(item).__name__}")
    missing = [k for k in ("chosen", "rejected", "prompt_len") if k not in item]
    if missing:
        raise ValueError(f"{what} lacks {missing}; a pair has chosen, rejected, prompt_len (and optionally {list(REF_KEYS)})")
    pair = {k: strip_right_padding(as_token_tensor(item[k], f"{what} {k}"), pad_id, f"{what} {k}") for k in ("chosen", "rejected")}
    prompt_len = int(torch.as_tensor(item["prompt_len"]).item())
    for name in ("chosen", "rejected"):
        if not 0 <= prompt_len < len(pair[name]):
            raise ValueError(
                f"{what}: prompt_len {prompt_len} leaves no response tokens in the {name} sequence of {len(pair[name])} tokens"
            )
    if not torch.equal(pair["chosen"][:prompt_len], pair["rejected"][:prompt_len]):
        raise ValueError(f"{what}: chosen and rejected must start with the same prompt (their first prompt_len tokens differ)")
    pair["prompt_len"] = prompt_len

    present = [k in item and item[k] is not None for k in REF_KEYS]
    if any(present) and not all(present):
        raise ValueError(f"{what} has only one of {list(REF_KEYS)}")
    if all(present):
        for k in REF_KEYS:
            pair[k] = float(torch.as_tensor(item[k]).item())
    return pair


def validate_pair_dataset(dataset, pad_id: int, name: str, max_checked: int = 64) -> bool:
    """Fail at construction, not mid-training: non-empty, first items well formed; returns whether it stores
    reference log-probs."""
    check_non_empty(dataset, name)
    pairs = [normalize_pair(dataset[i], pad_id, f"{name} item {i}") for i in range(min(len(dataset), max_checked))]
    stored = getattr(dataset, "has_ref_logps", None)
    if stored is None:
        stored = REF_KEYS[0] in pairs[0]
    if any((REF_KEYS[0] in pair) != stored for pair in pairs):
        raise ValueError(f"{name}: some pairs carry reference log-probs and some do not")
    return bool(stored)


class DPOCollate:
    """Collate pair dicts into DPO's arguments: chosen and rejected (b, n) right-padded with `pad_id` to one
    length (the longest sequence of the batch, not the folder's max_len), prompt_len (b,), and the reference
    log-probs (b,) when the pairs carry them."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, items) -> dict[str, Tensor]:
        pairs = [normalize_pair(item, self.pad_id, "DPO pair") for item in items]
        batch = len(pairs)
        seq, _ = pad_right([p["chosen"] for p in pairs] + [p["rejected"] for p in pairs], self.pad_id)
        out = dict(chosen=seq[:batch], rejected=seq[batch:], prompt_len=torch.tensor([p["prompt_len"] for p in pairs]))
        with_ref = [REF_KEYS[0] in p for p in pairs]
        if any(with_ref) and not all(with_ref):
            raise ValueError("a DPO batch mixes pairs with and without reference log-probs")
        if all(with_ref):
            for k in REF_KEYS:
                out[k] = torch.tensor([p[k] for p in pairs], dtype=torch.float32)
        return out


class DPOTrainer:
    """Train `model` with DPO on `train_dataset` (a `DPODataset` or any dataset of pair dicts); `trainer()`
    trains and returns the logged rows (one per optimizer step).

    Pass a `DPOConfig`, or its fields as keyword arguments. The reference: the pairs' stored log-probs when
    the datasets carry them (no reference model is held), otherwise a frozen copy of `model` made here, so
    the reference is the model as it is at the start of the stage. `pad_id` defaults to the dataset's
    `pad_id` attribute (a `DPODataset` has one), else -1.
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
        **config_kwargs,
    ):
        if config is not None and config_kwargs:
            raise TypeError(f"pass either a DPOConfig or its fields, not both (got {sorted(config_kwargs)})")
        self.config = config = config or DPOConfig(**config_kwargs)
        self.accelerator = accelerator or Accelerator(**(accelerate_kwargs or {}))
        self.pad_id = pad_id = getattr(train_dataset, "pad_id", -1) if pad_id is None else pad_id
        self.checkpoint_folder, self.checkpoint_prefix, self.metric_prefix = Path(checkpoint_folder), checkpoint_prefix, metric_prefix

        train_has_ref = validate_pair_dataset(train_dataset, pad_id, "DPO train_dataset")
        valid_has_ref = True
        if valid_dataset is not None:
            valid_has_ref = validate_pair_dataset(valid_dataset, pad_id, "DPO valid_dataset")
        elif config.valid_every is not None:
            raise ValueError("DPOConfig.valid_every is set but there is no valid_dataset to evaluate on")

        # the reference: stored log-probs, or the model as it is now, frozen (made before any wrapping)
        self.ref_model = None
        if not (train_has_ref and valid_has_ref):
            self.ref_model = frozen_copy(extract_model_from_parallel(model)).to(self.accelerator.device)

        collate = DPOCollate(pad_id)
        train_loader = DataLoader(train_dataset, batch_size=config.batch_size, shuffle=True, drop_last=False, collate_fn=collate)
        self.valid_loader = None
        if valid_dataset is not None:
            self.valid_loader = DataLoader(valid_dataset, batch_size=config.batch_size, collate_fn=collate)

        # the shorter of the two caps
        epoch_steps = steps_per_epoch(len(train_dataset), batch_size=config.batch_size,
                                      num_processes=self.accelerator.num_processes, grad_accum_steps=config.grad_accum_steps)
        caps = [config.num_train_steps, config.num_epochs and epoch_steps * config.num_epochs]
        self.num_train_steps = min(c for c in caps if c)

        set_dropout(model, config.dropout)
        optimizer, self.scheduler = adamw_for_stage(model, config, self.num_train_steps)
        # the scheduler is stepped by hand once per optimizer step: Accelerate's wrapper would step it once per process
        self.model, self.optimizer, self.train_loader = self.accelerator.prepare(model, optimizer, train_loader)
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
        self.accelerator.log({f"{self.metric_prefix}/{k}": v for k, v in row.items() if k != "step"}, step=row["step"])

    def train(self) -> list[dict]:
        accelerator, config = self.accelerator, self.config
        stopper = config.early_stopper
        accelerator.gradient_accumulation_steps = config.grad_accum_steps
        self.dpo.train()
        if stopper is not None:
            stopper.reset()  # a stopper may be shared by several stages
        stopper_steps: list[int] = []  # the step of each of the stopper's evaluations

        progress = tqdm(total=self.num_train_steps, desc=self.metric_prefix, disable=not accelerator.is_local_main_process)
        step = 0
        micro_metrics = []
        done = False

        while not done:
            for batch in self.train_loader:
                # 1) forward and backward one micro-batch; Accelerate syncs and divides by grad_accum_steps
                with accelerator.accumulate(self.model):
                    with accelerator.autocast():  # the reference too, under mixed precision
                        loss, metrics = self.dpo(**batch)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and config.max_grad_norm is not None:
                        accelerator.clip_grad_norm_(self.model.parameters(), config.max_grad_norm)
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
                    done = stopper(self.model, accelerator) or done
                    stopper_steps.append(step)
                    row["early_stop_score"] = stopper.scores[-1]
                    if done:
                        stopper.restore_best(self.model)
                        row["best_step"] = stopper_steps[stopper.best_index]

                # 4) validation every valid_every steps, and at the end (of the weights the stage returns)
                if self.valid_loader is not None and (done or (config.valid_every and step % config.valid_every == 0)):
                    row.update({f"valid_{k}": v for k, v in self.valid_metrics().items()})

                # 5) checkpoint every checkpoint_every steps
                if config.checkpoint_every and step % config.checkpoint_every == 0:
                    path = self.checkpoint_folder / f"{self.checkpoint_prefix}-step-{step}.pt"
                    save_checkpoint(accelerator, self.model, path, step=step)

                self.log(row)
                progress.update(1)
                progress.set_postfix({k: f"{row[k]:.4g}" for k in ("loss", "rewards/accuracies", "rewards/margins")})

                if done:
                    break

        progress.close()
        return self.history

    __call__ = train
