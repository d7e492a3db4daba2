"""The DPO objective (Rafailov et al. 2023) of a policy on (chosen, rejected) pairs, as an `nn.Module`.

One policy forward over chosen and rejected stacked along the batch; the reference log-probs either stored with
the pairs (computed by the model that generated them) or from a frozen copy of the policy; then the shared
preference loss (training/losses.py), plus the optional RPO NLL term. The metrics are TRL's DPOTrainer's, from the
summed log-probs for every loss type.
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


def nll_per_token(chosen_sums: Tensor, chosen_tokens: Tensor) -> Tensor:
    """The chosen responses' NLL averaged over all their tokens: minus their summed log-probs over their length."""
    return -chosen_sums.sum() / chosen_tokens.sum().clamp(min=1)


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
    the batch (RPO: TRL's `loss_type=["sigmoid", "sft"]` with `loss_weights=[1.0, nll_weight]`). The metrics use
    the summed log-probs whatever the reduction, as TRL's (`summarize`).
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
        """Per pair (b,): `loss` (the preference loss plus the weighted NLL), `chosen_rewards`, `rejected_rewards`
        (β times the summed log-ratios), `chosen_logps`, `rejected_logps` (the policy's, summed over the response)
        and `chosen_tokens` (the chosen response's length)."""
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

        # 2) log π(response | prompt), summed over the response, under the reference, then the policy (the reference
        #    first: its activations are freed before the policy's graph is built, so peak memory is one forward's)
        tokens = mask[:, 1:].sum(dim=-1)  # scored response tokens per row
        per_token = self.logp_reduction == "mean"
        if chosen_ref_logp is not None:  # stored with the pairs, in this objective's reduction
            ref_sums = torch.cat([chosen_ref_logp, rejected_ref_logp]).to(tokens.device)
            ref_sums = ref_sums * tokens if per_token else ref_sums
        else:
            with torch.no_grad():
                ref_sums = model_sequence_logprobs(self.ref_model, seq, mask, "sum")
        sums = model_sequence_logprobs(self.model, seq, mask, "sum")
        ref_sums = ref_sums.to(sums)

        # 3) the preference loss on the objective's reduction (per token for IPO), plus the chosen tokens' NLL (RPO)
        reduce = (lambda x: x / tokens.clamp(min=1)) if per_token else (lambda x: x)
        logps, ref_logps = reduce(sums), reduce(ref_sums)
        losses = preference_loss(
            logps[:batch], logps[batch:], ref_logps[:batch], ref_logps[batch:],
            beta=self.beta, loss_type=self.loss_type, label_smoothing=self.label_smoothing,
        )
        chosen_tokens = tokens[:batch]
        if self.nll_weight > 0:
            # as TRL's "sft" loss term: the chosen tokens' NLL averaged over every chosen token of the batch, so a
            # long answer weighs by its length (the RPO paper divides per sequence: equal for equal lengths)
            losses = losses + self.nll_weight * nll_per_token(sums[:batch], chosen_tokens)
        if weight is not None:  # ScPO's instance weights multiply both terms (Prasad et al. 2024, eq. 1)
            losses = losses * weight.to(losses)

        # 4) the metrics' inputs, as TRL's: summed log-probs whatever the loss's reduction
        sums, ref_sums = sums.detach(), ref_sums.detach()
        return {
            "loss": losses,
            "chosen_rewards": self.beta * (sums[:batch] - ref_sums[:batch]),
            "rejected_rewards": self.beta * (sums[batch:] - ref_sums[batch:]),
            "chosen_logps": sums[:batch], "rejected_logps": sums[batch:], "chosen_tokens": chosen_tokens.to(sums),
        }

    def summarize(self, values: dict[str, Tensor]) -> dict[str, Tensor]:
        """Batch metrics (detached 0-d tensors) from `pair_values`, named and computed as TRL's DPOTrainer logs
        them for every loss type: `rewards/*` from β times the summed log-ratios, `logps/*` the summed log-probs,
        means over pairs. `nll` (with `nll_weight` > 0) is the NLL term of the loss before its weight."""
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
            metrics["nll"] = nll_per_token(values["chosen_logps"], values["chosen_tokens"])
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
