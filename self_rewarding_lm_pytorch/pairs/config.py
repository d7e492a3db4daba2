"""How a stage makes its preference pairs, whoever judges: `PairGenerationConfig` (pairs/loop.py runs it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import Tensor

from self_rewarding_lm_pytorch.data.config_types import check_field_types
from self_rewarding_lm_pytorch.generation.sampling import check_sampling_settings
from self_rewarding_lm_pytorch.judging.judges import check_reward_fn_signature
from self_rewarding_lm_pytorch.pairs.selection import PairFilter, best_and_worst, is_finite_reward
from self_rewarding_lm_pytorch.training.options import check_at_least_one


@dataclass(kw_only=True)
class PairGenerationConfig:
    """How a stage makes its preference pairs, whoever judges. Defaults follow the paper: N = 4 candidates
    sampled at temperature 0.7 and top-p 0.9, best vs worst. (The judge's own settings live with the judge.)

    The pair-generation fields of every preference stage (stages/preference.py), which inherit them from here."""

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
        check_field_types(self)  # before any check compares a field
        self.check_pair_generation()

    def check_pair_generation(self):
        """Raise for pair-generation settings that cannot make pairs. Every config that makes pairs (this one and
        the preference stages) runs it from its `__post_init__`; it makes `pair_filters` a tuple."""
        name = type(self).__name__
        check_at_least_one(self, "num_preference_pairs", "num_candidate_responses", "prompt_batch_size",
                           "response_max_new_tokens", "fail_fast_after_prompts")
        if self.num_candidate_responses < 2:
            raise ValueError(f"{name}.num_candidate_responses must be >= 2 to form a pair, got {self.num_candidate_responses}")
        check_sampling_settings(self, "temperature", "top_p")
        check_at_least_one(self, "max_prompts", optional=True)
        if self.max_seq_len is not None and self.max_seq_len < 2:
            raise ValueError(f"{name}.max_seq_len must be >= 2 or None (the model's max_seq_len), got {self.max_seq_len}")
        for field_name in ("is_valid_reward", "pick_paired_rewards", "is_valid_reward_pair", "verifier"):
            value = getattr(self, field_name)
            if value is not None and not callable(value):
                raise TypeError(f"{name}.{field_name} must be callable, got a {type(value).__name__}")
        if self.verifier is not None:
            check_reward_fn_signature(self.verifier, f"{name}.verifier")
        self.pair_filters = tuple(self.pair_filters)
        for i, pair_filter in enumerate(self.pair_filters):
            if not (callable(pair_filter) and isinstance(getattr(pair_filter, "name", None), str)):
                raise TypeError(
                    f"{name}.pair_filters[{i}] must be a callable with a `name` (e.g. JudgementsAgree(), "
                    f"MarginAtLeast(0.25)), got {type(pair_filter).__name__}"
                )
