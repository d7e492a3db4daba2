"""Pure rules that turn candidates' scores into preference pairs: which scores are valid, which two candidates
form the pair. No model, no I/O: each is a function over numbers or a (prompts, candidates) score tensor.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor


def is_finite_reward(reward: float) -> bool:
    return math.isfinite(reward)


def reward_within(low: float, high: float) -> Callable[[float], bool]:
    """A validity rule for scores on a known scale, e.g. `reward_within(0, 5)` for the paper's judge prompt."""

    def is_valid(reward: float) -> bool:
        return low <= reward <= high

    is_valid.__name__ = f"reward_within({low}, {high})"
    return is_valid


def best_and_worst(rewards: Tensor) -> Tensor:
    """(b, n) mean scores, NaN where a candidate has none -> (b, 2) indices of (chosen, rejected), -1 for no pair.

    The best and the worst scored candidates form the pair (the paper's choice); a prompt with fewer than two
    scored candidates, or whose best and worst scores are equal, gives no pair."""
    scored = ~rewards.isnan()
    best = rewards.masked_fill(~scored, -math.inf).argmax(dim=-1)
    worst = rewards.masked_fill(~scored, math.inf).argmin(dim=-1)
    best_score = rewards.gather(-1, best[:, None])[:, 0]
    worst_score = rewards.gather(-1, worst[:, None])[:, 0]
    has_pair = (scored.sum(dim=-1) >= 2) & (best_score > worst_score)
    pairs = torch.stack([best, worst], dim=-1)
    return pairs.masked_fill(~has_pair[:, None], -1)
