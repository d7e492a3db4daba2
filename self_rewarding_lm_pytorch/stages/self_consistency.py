"""The self-consistency DPO stage (ScPO, Prasad et al. 2024): no judge prompt; the model's answers to a prompt
vote, and DPO trains on the most- vs least-voted answer."""

from __future__ import annotations

from self_rewarding_lm_pytorch.judging.self_consistency import SelfConsistencyJudge
from self_rewarding_lm_pytorch.stages.configs import SelfConsistencyDPOConfig
from self_rewarding_lm_pytorch.stages.kind import PlanInputs, StageContext, StageKind
from self_rewarding_lm_pytorch.stages.preference import check_pair_filters, check_prompts, run_judged_stage


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


SELF_CONSISTENCY_STAGE = StageKind(name="self-consistency-dpo", config=SelfConsistencyDPOConfig,
                                   run=run_self_consistency, check=check_self_consistency,
                                   answer_budget="response_max_new_tokens")
