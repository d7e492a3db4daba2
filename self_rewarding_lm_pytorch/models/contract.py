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
        "For a HuggingFace causal LM wrap it with `self_rewarding_lm_pytorch.models.hf.HFCausalLM(model)`; "
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


def vocab_size(model: nn.Module) -> int | None:
    """The model's vocabulary size when it says (x-transformers' `num_tokens`, an HF config's `vocab_size`)."""
    for owner in (model, getattr(model, "model", None)):
        size = getattr(owner, "num_tokens", None) or getattr(getattr(owner, "config", None), "vocab_size", None)
        if isinstance(size, int):
            return size
    return None


def check_special_ids(model: nn.Module, pad_id: int, eos_id: int | None, where: str):
    """An EOS id the model can never produce (negative, past the vocabulary) means no row ever stops, and one
    equal to `pad_id` means every response is cut at its first EOS and padding is read as end of text."""
    if eos_id is None:
        return
    if not isinstance(eos_id, int) or isinstance(eos_id, bool):
        raise TypeError(f"{where}: eos_id must be an int token id or None, got {type(eos_id).__name__}")
    size = vocab_size(model)
    if eos_id < 0 or (size is not None and eos_id >= size):
        raise ValueError(
            f"{where}: eos_id {eos_id} is outside the model's vocabulary (0..{'?' if size is None else size - 1}), so "
            f"generation would never stop at it: pass the tokenizer's EOS token id, or None"
        )
    if eos_id == pad_id:
        raise ValueError(
            f"{where}: eos_id and pad_id are both {eos_id}: padding would read as end of text. Keep pad_id outside "
            f"the vocabulary (the default -1) or use another pad id"
        )
