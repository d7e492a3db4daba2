"""How a stage makes its preference pairs, whoever judges: `PairGenerationConfig` (pairs/loop.py runs it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import Tensor

from self_rewarding_lm_pytorch.pairs.selection import PairFilter, best_and_worst, is_finite_reward
from self_rewarding_lm_pytorch.generation.sampling import check_sampling_settings


@dataclass(kw_only=True)
class PairGenerationConfig:
    """How a stage makes its preference pairs, whoever judges. Defaults follow the paper: N = 4 candidates
    sampled at temperature 0.7 and top-p 0.9, best vs worst. (The judge's own settings live with the judge.)"""

    num_preference_pairs: int
    num_candidate_responses: int = 4
    prompt_batch_size: int = 16
    response_max_new_tokens: int = 128
    max_seq_len: int | None = None  # prompt + response cap; None: the model's `max_seq_len`
    temperature: float = 0.7
    top_p: float | None = 0.9
    is_valid_reward: Callable[[float], bool] = is_finite_reward
    is_valid_reward_pair: Callable[[float, float], bool] | None = None  # (chosen, rejected) -> keep?
    pick_paired_rewards: Callable[[Tensor], Tensor] = best_and_worst
    pair_filters: tuple[PairFilter, ...] = ()  # e.g. (JudgementsAgree(),): drops counted per filter in the stats
    max_prompts: int | None = None  # prompts to try at most; None: every prompt of the dataset, once
    fail_fast_after_prompts: int = 64  # stop early when no judgement at all was usable after this many prompts
    accept_fewer_pairs: bool = False  # out of prompts with fewer pairs than asked: keep them instead of an error
    verifier: Callable[[str, str], float | bool] | None = None  # diagnostics only: how often the judge agrees

    def __post_init__(self):
        positive = ("num_preference_pairs", "num_candidate_responses", "prompt_batch_size", "response_max_new_tokens",
                    "fail_fast_after_prompts")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{type(self).__name__}.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_candidate_responses < 2:
            raise ValueError(
                f"{type(self).__name__}.num_candidate_responses must be >= 2 to form a pair, got {self.num_candidate_responses}"
            )
        check_sampling_settings(self, "temperature", "top_p")
        if self.max_prompts is not None and self.max_prompts < 1:
            raise ValueError(f"{type(self).__name__}.max_prompts must be >= 1 or None, got {self.max_prompts}")
        if self.max_seq_len is not None and self.max_seq_len < 2:
            raise ValueError(f"{type(self).__name__}.max_seq_len must be >= 2 or None, got {self.max_seq_len}")
        for name in ("is_valid_reward", "pick_paired_rewards", "is_valid_reward_pair", "verifier"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise TypeError(f"{type(self).__name__}.{name} must be callable, got a {type(value).__name__}")
        self.pair_filters = tuple(self.pair_filters)
        for i, pair_filter in enumerate(self.pair_filters):
            if not (callable(pair_filter) and isinstance(getattr(pair_filter, "name", None), str)):
                raise TypeError(
                    f"{type(self).__name__}.pair_filters[{i}] must be a callable with a `name` (e.g. JudgementsAgree(), "
                    f"MarginAtLeast(0.25)), got {type(pair_filter).__name__}"
                )
