"""The one thing the library asks of a model: token ids (b, n) in, logits (b, n, vocab) out.

Every forward pass in the library goes through `forward_logits`, so a model that breaks the contract
fails at its first call with a message that says what came back and what to do, instead of an
obscure shape error three functions later.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ModelContractError(TypeError):
    """The model's forward did not return a (batch, seq, vocab) logits tensor."""


def _describe(output) -> str:
    if torch.is_tensor(output):
        return f"a tensor of shape {tuple(output.shape)} and dtype {output.dtype}"
    if isinstance(output, (tuple, list)):
        inner = ", ".join(type(item).__name__ for item in output[:4])
        return f"a {type(output).__name__} of {len(output)} items ({inner}{', ...' if len(output) > 4 else ''})"
    return f"an object of type {type(output).__module__}.{type(output).__qualname__}"


def check_logits(output, ids: Tensor) -> Tensor:
    """Return `output` if it is a float tensor of shape (b, n, vocab) matching `ids` (b, n), else raise."""

    fix = (
        "The model must map token ids (batch, seq) to logits (batch, seq, vocab). "
        "For a HuggingFace causal LM wrap it with `self_rewarding_lm_pytorch.hf.HFCausalLM(model)`; "
        "for any other model, wrap it in a Module whose forward returns only the logits tensor."
    )

    if not torch.is_tensor(output):
        raise ModelContractError(f"model(ids) returned {_describe(output)}, not a logits tensor. {fix}")

    if output.ndim != 3 or output.shape[:2] != ids.shape[:2]:
        raise ModelContractError(
            f"model(ids) with ids of shape {tuple(ids.shape)} returned {_describe(output)}; "
            f"expected ({ids.shape[0]}, {ids.shape[1]}, vocab). {fix}"
        )

    if not output.is_floating_point():
        raise ModelContractError(f"model(ids) returned {_describe(output)}; logits must be floating point. {fix}")

    return output


def forward_logits(model: nn.Module, ids: Tensor, **kwargs) -> Tensor:
    """Call `model(ids, **kwargs)` and check that it kept the logits contract."""
    return check_logits(model(ids, **kwargs), ids)
