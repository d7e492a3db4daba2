"""Pure rules that turn candidates' scores into preference pairs: which scores are valid, which two candidates
form the pair, which picked pairs to keep. No model, no I/O: each is a function over numbers or a (prompts, candidates) score tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Protocol

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


# pair filters: after a pair is picked, each filter sees the per-judgement scores of its two candidates ((K,) each,
# NaN where a judgement gave no valid score) and keeps the pair or drops it; pair generation counts drops per filter


class PairFilter(Protocol):
    name: str

    def __call__(self, chosen_judgements: Tensor, rejected_judgements: Tensor) -> bool: ...


@dataclass(frozen=True)
class JudgementsAgree:
    """Consistency filtering (in the spirit of CREAM, Wang et al. 2024, arXiv 2410.12735): keep a pair only when
    the K judgements agree on its order. Every valid judgement of the chosen candidate is compared with every valid
    judgement of the rejected one; the pair stays when at least `min_share` of those comparisons rank the chosen
    strictly higher (1.0: the lowest judgement of the chosen beats the highest of the rejected)."""

    min_share: float = 1.0
    name: str = "judgements_agree"

    def __post_init__(self):
        if not 0 < self.min_share <= 1:
            raise ValueError(f"JudgementsAgree.min_share must be in (0, 1], got {self.min_share}")

    def __call__(self, chosen_judgements: Tensor, rejected_judgements: Tensor) -> bool:
        chosen = chosen_judgements[~chosen_judgements.isnan()]
        rejected = rejected_judgements[~rejected_judgements.isnan()]
        if not len(chosen) or not len(rejected):
            return False
        wins = (chosen[:, None] > rejected[None, :]).float().mean()
        return bool(wins >= self.min_share)


@dataclass(frozen=True)
class MarginAtLeast:
    """Keep a pair when its mean scores differ by at least `margin`. With the self-consistency judge (scores are
    vote shares V(y) / N) this is ScPO's vote-margin threshold: (V(chosen) - V(rejected)) / N >= margin."""

    margin: float
    name: str = "margin_at_least"

    def __post_init__(self):
        if not self.margin > 0:
            raise ValueError(f"MarginAtLeast.margin must be > 0, got {self.margin}")

    def __call__(self, chosen_judgements: Tensor, rejected_judgements: Tensor) -> bool:
        return bool(chosen_judgements.nanmean() - rejected_judgements.nanmean() >= self.margin - 1e-6)


def first_failed_filter(filters, chosen_judgements: Tensor, rejected_judgements: Tensor) -> str | None:
    """The name of the first filter that drops the pair, or None when every filter keeps it."""
    for pair_filter in filters:
        if not pair_filter(chosen_judgements, rejected_judgements):
            return pair_filter.name
    return None
