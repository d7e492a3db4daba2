"""The self-consistency DPO stage (ScPO, Prasad et al. 2024): no judge prompt; the model's answers to a prompt
vote, and DPO trains on the most- vs least-voted answer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Hashable

from self_rewarding_lm_pytorch.judging.self_consistency import SelfConsistencyJudge, stripped_response
from self_rewarding_lm_pytorch.pairs.selection import MarginAtLeast
from self_rewarding_lm_pytorch.stages.kind import PlanInputs, StageContext, StageKind
from self_rewarding_lm_pytorch.stages.preference import (
    PROBE_RESPONSES,
    PreferenceStageConfig,
    check_pair_filters,
    check_prompts,
    pair_probes,
    probe_prompts,
    run_judged_stage,
    user_probe,
)
from self_rewarding_lm_pytorch.storage.probes import Probe


@dataclass(kw_only=True)
class SelfConsistencyDPOConfig(PreferenceStageConfig):
    """A self-consistency iteration (ScPO, Prasad et al. 2024): the model answers `prompt_dataset` N times
    (`num_candidate_responses`; the paper samples 8 or more), no judge prompt is used: each answer scores the share
    of the N answers with the same `answer_key`, and DPO trains on the most- vs least-voted answer (a prompt whose
    answers all agree gives no pair). `min_vote_margin` keeps only pairs whose vote shares differ by at least that
    much (the paper's threshold); `margin_weighted_loss=True` weights each pair's loss by that difference."""

    answer_key: Callable[[str], Hashable | None] = stripped_response
    min_vote_margin: float | None = None

    def __post_init__(self):
        self.check_preference_stage()
        if not callable(self.answer_key):
            raise TypeError(f"SelfConsistencyDPOConfig.answer_key must be callable (response -> answer), got {self.answer_key!r}")
        if self.min_vote_margin is not None:
            if not 0 < self.min_vote_margin <= 1:
                raise ValueError(
                    f"SelfConsistencyDPOConfig.min_vote_margin is a difference of vote shares, in (0, 1]; got {self.min_vote_margin}"
                )
            vote_margin = MarginAtLeast(self.min_vote_margin, name="vote_margin")
            others = [f for f in self.pair_filters if isinstance(f, MarginAtLeast) and f != vote_margin]
            if others:
                raise ValueError(
                    f"SelfConsistencyDPOConfig.min_vote_margin={self.min_vote_margin} and pair_filters' {others[0]!r} "
                    f"both set a margin: keep one of the two"
                )
            if vote_margin not in self.pair_filters:  # already there when the config is rebuilt from its fields
                self.pair_filters = (*self.pair_filters, vote_margin)


def run_self_consistency(config: SelfConsistencyDPOConfig, context: StageContext) -> dict:
    return run_judged_stage(config, context, SelfConsistencyJudge(config.answer_key))


def check_self_consistency(stage: str, config: SelfConsistencyDPOConfig, inputs: PlanInputs):
    check_prompts(stage, config, inputs)
    check_answer_key(stage, config)
    check_pair_filters(stage, config, judgements=1, scale="vote shares in [0, 1]", width=1.0,
                       one_judgement_fix="drop the filter: this stage's judge scores each candidate once")


def check_answer_key(stage: str, config: SelfConsistencyDPOConfig):
    """One call on an empty answer (a model may give one): the key must be hashable, or None for no answer, for
    the votes to be counted."""
    key = config.answer_key("")
    try:
        hash(key)
    except TypeError:
        raise TypeError(
            f"{stage}.answer_key returned a {type(key).__name__} for the answer '': answers are "
            f"counted as votes, so the key must be hashable (a str, number or tuple), or None for no answer. Return "
            f"e.g. tuple(...) instead of a list"
        ) from None


def self_consistency_probes(config: SelfConsistencyDPOConfig, inputs: PlanInputs) -> list[Probe]:
    """A user `answer_key` on the probe responses and prompts (as answers)."""
    answers = [(text,) for text in (*PROBE_RESPONSES, *probe_prompts(config))]
    return pair_probes(config, inputs) + user_probe("answer_key", config.answer_key, answers)


SELF_CONSISTENCY_STAGE = StageKind(name="self-consistency-dpo", config=SelfConsistencyDPOConfig,
                                   run=run_self_consistency, check=check_self_consistency,
                                   answer_budget="response_max_new_tokens", probes=self_consistency_probes)
