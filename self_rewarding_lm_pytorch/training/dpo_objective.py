"""The DPO objective (Rafailov et al. 2023) of a policy on (chosen, rejected) pairs, as an `nn.Module`.

One policy forward over chosen and rejected stacked along the batch; the reference log-probs either stored with
the pairs (computed by the model that generated them) or from a frozen copy of the policy; then the shared
preference loss (training/losses.py), plus the optional RPO NLL term.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from self_rewarding_lm_pytorch.models.adapters import reference_model
from self_rewarding_lm_pytorch.training.logprobs import Reduction, model_sequence_logprobs, response_mask
from self_rewarding_lm_pytorch.training.losses import LossType, check_preference_loss_settings, preference_loss


def trailing_padding(seq: Tensor, pad_id: int) -> Tensor:
    """True at the run of `pad_id` that ends each row (the right padding); a pad id before a real token is a token."""
    positions = torch.arange(seq.shape[-1], device=seq.device)
    length = ((seq != pad_id) * (positions + 1)).amax(dim=-1)  # index of the last real token + 1
    return positions[None, :] >= length[:, None]


def default_logp_reduction(loss_type: str) -> Reduction:
    """The log-prob reduction a loss is used with in TRL and by its authors: IPO (Azar et al. 2023) averages
    per token, DPO's sigmoid and the hinge loss sum over the response."""
    return "mean" if loss_type == "ipo" else "sum"


class DPO(nn.Module):
    """The DPO loss of a policy `model` on (chosen, rejected) pairs.

    The reference is a frozen copy of `model` made here, or `model` with its adapters off when it has LoRA
    adapters (models/adapters.py), or `ref_model` when given; with
    `precomputed_reference=True` no reference model is held and every call must pass the reference log-probs.
    Sequences are prompt + response, right-padded with `pad_id`. `logp_reduction` None is 'mean' for IPO and
    'sum' otherwise (as TRL). `nll_weight` > 0 adds the chosen responses' NLL averaged over all their tokens in
    the batch (RPO, as TRL's `rpo_alpha`).
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
        logp_reduction: Reduction | None = None,
        nll_weight: float = 0.0,
        pad_id: int = -1,
    ):
        super().__init__()
        check_preference_loss_settings(beta, loss_type, label_smoothing, type(self).__name__)
        logp_reduction = default_logp_reduction(loss_type) if logp_reduction is None else logp_reduction
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
            self.ref_model = reference_model(model) if ref_model is None else ref_model.eval().requires_grad_(False)

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
        weight: Tensor | None = None,
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
        chosen_tokens = mask[:batch, 1:].sum(dim=-1)
        chosen_sums = chosen_logps if self.logp_reduction == "sum" else chosen_logps * chosen_tokens
        nll = -chosen_sums / chosen_tokens.clamp(min=1)  # per pair, per token: a metric
        if self.nll_weight > 0:
            # RPO's term as TRL computes it: the chosen tokens' NLL averaged over every chosen token of the batch,
            # so a long answer weighs by its length (the paper divides per sequence: equal for equal lengths)
            batch_nll = -chosen_sums.sum() / chosen_tokens.sum().clamp(min=1)
            losses = losses + self.nll_weight * batch_nll
        if weight is not None:  # ScPO's instance weights multiply both terms (Prasad et al. 2024, eq. 1)
            losses = losses * weight.to(losses)

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
        weight: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """(loss, metrics) of a batch: chosen, rejected (b, n), prompt_len (b,), optional reference log-probs (b,),
        optional per-pair loss weights (b,)."""
        values = self.pair_values(chosen, rejected, prompt_len, chosen_ref_logp, rejected_ref_logp, weight)
        return values["loss"].mean(), self.summarize(values)
