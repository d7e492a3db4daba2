"""Per-sequence log-probabilities: the single definition shared by SFT, DPO, SPIN and pair generation.

Convention (the one every causal LM uses): the logits at position t-1 predict token t. So token t is
scored by `logits[:, t - 1]`, and the mask that selects which tokens count is shifted together with
the labels. Position 0 has no prediction and never counts.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from beartype import beartype
from einops import rearrange
from jaxtyping import Bool, Float, Int, jaxtyped
from torch import Tensor, nn

from self_rewarding_lm_pytorch.data.datasets import pad_right
from self_rewarding_lm_pytorch.models.adapters import adapters_disabled
from self_rewarding_lm_pytorch.models.contract import forward_logits
from self_rewarding_lm_pytorch.models.sharding import idle_forward, is_fully_sharded

Reduction = Literal["sum", "mean"]


@jaxtyped(typechecker=beartype)
def token_logprobs(
    logits: Float[Tensor, "b n v"],
    seq: Int[Tensor, "b n"],
) -> Float[Tensor, "b n_minus_1"]:
    """log p(seq[:, t] | seq[:, :t]) for t = 1..n-1, from the logits at t-1.

    `seq` may hold any value where the caller will mask (e.g. a pad id of -1): such labels are
    clamped into the vocabulary so the gather is valid, and the caller's mask discards them.
    """
    labels = seq[:, 1:].clamp(0, logits.shape[-1] - 1)
    # cross_entropy is the fused, memory-light form of -log_softmax(...).gather(labels)
    return -F.cross_entropy(rearrange(logits[:, :-1].float(), "b n v -> b v n"), labels, reduction="none")


@jaxtyped(typechecker=beartype)
def sequence_logprobs(
    logits: Float[Tensor, "b n v"],
    seq: Int[Tensor, "b n"],
    mask: Bool[Tensor, "b n"],
    reduction: Reduction = "sum",
) -> Float[Tensor, " b"]:
    """Log-probability of the masked tokens of each sequence.

    `mask[:, t]` says whether token t is scored (typically: a response token and not padding).
    The sum (default) is log p(response | prompt), the quantity in the DPO objective (Rafailov et al.
    2023, eq. 7); `mean` divides by the number of scored tokens.
    """
    scored = mask[:, 1:]
    logps = token_logprobs(logits, seq).masked_fill(~scored, 0.0).sum(dim=-1)

    if reduction == "mean":
        logps = logps / scored.sum(dim=-1).clamp(min=1)

    return logps


@jaxtyped(typechecker=beartype)
def response_mask(
    seq: Int[Tensor, "b n"],
    prompt_len: Int[Tensor, " b"],
    is_padding: Bool[Tensor, "b n"],
) -> Bool[Tensor, "b n"]:
    """True at response tokens: at or after `prompt_len` and not padding."""
    positions = torch.arange(seq.shape[-1], device=seq.device)
    return (positions >= prompt_len[:, None]) & ~is_padding


def model_sequence_logprobs(
    model: nn.Module,
    seq: Tensor,
    mask: Tensor,
    reduction: Reduction = "sum",
) -> Tensor:
    """Run `model` over right-padded `seq` and return the log-prob of the masked tokens per row.

    Right padding needs no attention mask for a causal model: padding comes after every scored
    token, so it cannot influence them. Negative ids (padding) are replaced by token 0 before the
    forward so that a pad id outside the vocabulary (the default, -1) never reaches the embedding.
    """
    logits = forward_logits(model, seq.clamp(min=0))
    return sequence_logprobs(logits, seq, mask, reduction)


@torch.no_grad()
def reference_logprobs(
    model: nn.Module,
    seqs: list[Tensor],
    prompt_len: Tensor,
    pad_id: int,
    reduction: Reduction = "sum",
) -> Tensor:
    """log p(response | prompt) under `model` (eval mode, no grad, one batch) for 1-D prompt + response
    sequences: what pair generation and SPIN store as the DPO reference, computed by the very model that
    is the reference. A model with LoRA adapters computes them with its adapters off, the reference DPO's
    live reference uses too (models/adapters.py). No sequences give an empty tensor; a sharded model's rank then still
    runs one (idle) forward, matching the other ranks' forward."""
    device = next(model.parameters()).device
    if not seqs:
        if is_fully_sharded(model):
            with _as_reference(model):
                idle_forward(model)
        return torch.empty(0)
    ids, is_padding = pad_right([torch.as_tensor(s).long().cpu() for s in seqs], pad_id)
    ids, is_padding, prompt_len = ids.to(device), is_padding.to(device), prompt_len.to(device)
    with _as_reference(model):
        logps = model_sequence_logprobs(model, ids, response_mask(ids, prompt_len, is_padding), reduction)
    return logps.float().cpu()


@contextmanager
def _as_reference(model: nn.Module):
    """Eval mode with the adapters (if any) off, for the duration."""
    was_training = model.training
    model.eval()
    try:
        with adapters_disabled(model):
            yield
    finally:
        model.train(was_training)
