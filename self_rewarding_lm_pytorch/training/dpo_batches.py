"""Preference pairs as DPO batches: each pair dict checked once and padded per batch.

A pair is a dict: `chosen`, `rejected` (prompt + response token ids, 1-D, possibly right-padded with pad_id),
`prompt_len`, and optionally `chosen_ref_logp`, `rejected_ref_logp` (log π_ref(response | prompt)), as
`DPODataset` (storage/pair_store.py) yields them.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from self_rewarding_lm_pytorch.data.datasets import as_token_tensor, check_non_empty, pad_right, strip_right_padding

REF_KEYS = ("chosen_ref_logp", "rejected_ref_logp")


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
    log-probs (b,) when the pairs carry them. With `margin_weights`, also `weight` (b,): each pair's score margin
    `chosen_reward - rejected_reward` (ScPO's (V(chosen) - V(rejected)) / N for vote-share scores)."""

    def __init__(self, pad_id: int, margin_weights: bool = False):
        self.pad_id = pad_id
        self.margin_weights = margin_weights

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
        if self.margin_weights:
            out["weight"] = torch.tensor([pair_margin(item) for item in items], dtype=torch.float32)
        return out


def pair_margin(item) -> float:
    """A pair's score margin, the weight of its loss under `DPOConfig.margin_weighted_loss`."""
    if "chosen_reward" not in item or "rejected_reward" not in item:
        raise ValueError(
            "margin_weighted_loss needs each pair's chosen_reward and rejected_reward (the pair folders written by pair "
            "generation hold them); these pairs have neither"
        )
    margin = float(torch.as_tensor(item["chosen_reward"]).item() - torch.as_tensor(item["rejected_reward"]).item())
    if not margin >= 0:
        raise ValueError(f"a pair's chosen_reward is below its rejected_reward (margin {margin}): its weight would be negative")
    return margin
