"""The external-reward DPO stage: candidates scored by a reward model or a reward function (e.g. an exact
checker), then DPO on best-vs-worst pairs."""

from __future__ import annotations

from self_rewarding_lm_pytorch.judging.judges import Judge, RewardFnJudge, RewardModelJudge, check_reward_value
from self_rewarding_lm_pytorch.stages.configs import ExternalRewardDPOConfig
from self_rewarding_lm_pytorch.stages.kind import PlanInputs, StageContext, StageKind
from self_rewarding_lm_pytorch.stages.preference import check_pair_filters, check_prompts, run_judged_stage


def external_judge(config: ExternalRewardDPOConfig, context: StageContext) -> Judge:
    if config.reward_fn is not None:
        return RewardFnJudge(config.reward_fn)
    return RewardModelJudge(config.reward_model, pad_id=context.pad_id, batch_size=config.reward_model_batch_size)


def run_external_reward(config: ExternalRewardDPOConfig, context: StageContext) -> dict:
    return run_judged_stage(config, context, external_judge(config, context))


def check_external_reward(stage: str, config: ExternalRewardDPOConfig, inputs: PlanInputs):
    check_prompts(stage, config, inputs)
    if config.reward_fn is not None and config.check_reward_fn_on_sample:
        check_reward_fn(stage, config)
    check_pair_filters(stage, config, judgements=1,
                       one_judgement_fix="drop the filter: this stage's judge scores each candidate once")


def check_reward_fn(stage: str, config: ExternalRewardDPOConfig):
    """One call on the first prompt with an empty answer: the function runs and returns a number, bool or None."""
    prompt = config.prompt_dataset[0]
    try:
        check_reward_value(config.reward_fn(prompt, ""), config.reward_fn, prompt, "")
    except Exception as error:
        raise (TypeError if isinstance(error, TypeError) else ValueError)(
            f"{stage}.reward_fn failed on a sample (prompt_dataset[0], an empty answer): {error}. "
            f"Fix the function, or pass check_reward_fn_on_sample=False if it must not be called before the stage"
        ) from error


EXTERNAL_REWARD_STAGE = StageKind(name="external-reward-dpo", config=ExternalRewardDPOConfig, run=run_external_reward,
                                  check=check_external_reward, answer_budget="response_max_new_tokens")
