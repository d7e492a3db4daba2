"""The self-reward DPO stage (Yuan et al. 2024, section 2): the model answers, judges its own answers with the
LLM-as-a-judge prompt, and DPO trains on its best-vs-worst pairs."""

from __future__ import annotations

from dataclasses import dataclass

from self_rewarding_lm_pytorch.generation.sampling import check_sampling_settings
from self_rewarding_lm_pytorch.judging.judge_prompt import RewardConfig
from self_rewarding_lm_pytorch.judging.judges import SelfJudge
from self_rewarding_lm_pytorch.stages.kind import PlanInputs, StageContext, StageKind
from self_rewarding_lm_pytorch.stages.preference import (
    PreferenceStageConfig,
    check_pair_filters,
    check_prompts,
    judge_prompt_length,
    pair_probes,
    run_judged_stage,
    score_scale,
    user_probe,
)
from self_rewarding_lm_pytorch.storage.probes import Probe
from self_rewarding_lm_pytorch.training.options import check_at_least_one


@dataclass(kw_only=True)
class SelfRewardDPOConfig(PreferenceStageConfig):
    """One self-rewarding iteration (Yuan et al. 2024, section 2): the model answers `prompt_dataset`, judges its
    own answers `num_judgements` times each with the LLM-as-a-judge prompt, and is trained by DPO on best-vs-worst
    pairs. `reward_config` None uses the trainer's `self_reward_prompt_config` (the paper's prompt by default)."""

    reward_config: RewardConfig | None = None
    num_judgements: int = 3
    judge_max_new_tokens: int = 256  # the judge's answer budget, on top of its (long) prompt
    judge_temperature: float = 0.7
    judge_top_p: float | None = 0.9
    judge_batch_size: int = 16  # candidates judged per sampler call (x num_judgements rows): bounds memory

    def __post_init__(self):
        self.check_preference_stage()
        self.check_self_judge()

    def check_self_judge(self):
        """The settings of the model as its own judge."""
        check_at_least_one(self, "num_judgements", "judge_max_new_tokens", "judge_batch_size")
        check_sampling_settings(self, "judge_temperature", "judge_top_p")


def self_judge(config: SelfRewardDPOConfig, context: StageContext) -> SelfJudge:
    """The model with its judge prompt (the stage's `reward_config`, else the plan's), sampled `num_judgements`
    times per candidate."""
    return SelfJudge(
        context.model, config.reward_config or context.reward_config,
        tokenizer_encode=context.judge_encode, tokenizer_decode=context.decode,
        num_judgements=config.num_judgements, max_new_tokens=config.judge_max_new_tokens,
        temperature=config.judge_temperature, top_p=config.judge_top_p,
        pad_id=context.pad_id, eos_id=context.eos_id, batch_size=config.judge_batch_size, sampler=context.sampler,
    )


def run_self_reward(config: SelfRewardDPOConfig, context: StageContext) -> dict:
    return run_judged_stage(config, context, self_judge(config, context))


def check_self_reward(stage: str, config: SelfRewardDPOConfig, inputs: PlanInputs):
    prompt_ids = check_prompts(stage, config, inputs)
    judge_config = config.reward_config or inputs.reward_config
    check_judge_prompt_fits(stage, config, inputs, prompt_ids)
    check_pair_filters(stage, config, judgements=config.num_judgements, **score_scale(judge_config),
                       one_judgement_fix="raise num_judgements to 2 or more, or drop the filter")


def check_judge_prompt_fits(stage: str, config: SelfRewardDPOConfig, inputs: PlanInputs, prompt_ids: dict):
    """The judge prompt (encoded with the judge's tokenizer) of the longest prompt with a full-length answer, plus
    the judge's own answer budget, fits the model."""
    reward_config = config.reward_config or inputs.reward_config
    measured = judge_prompt_length(config, inputs, prompt_ids, lambda prompt: reward_config.render(prompt, ""),
                                   f"{stage}: the judge's tokenizer_encode")
    if measured is None:
        return
    limit, longest, template = measured
    needed = template + config.response_max_new_tokens + config.judge_max_new_tokens
    if needed > limit:
        raise ValueError(
            f"{stage}: the judge prompt rendered with its longest prompt (prompt_dataset[{longest}]) "
            f"is {template} tokens; with a {config.response_max_new_tokens}-token answer (response_max_new_tokens) and "
            f"{config.judge_max_new_tokens} tokens for the judgement (judge_max_new_tokens) it needs {needed} positions, "
            f"but the model's max_seq_len is {limit}. Pass a shorter RewardConfig prompt_template (the paper's is about "
            f"1,750 characters) as reward_config or self_reward_prompt_config, lower judge_max_new_tokens or "
            f"response_max_new_tokens, or use a model with a longer max_seq_len"
        )


# judge outputs a user `parse_reward` is probed with
PROBE_JUDGEMENTS = ("Score: 4", "Score: 4.5", "Score: 10/10", "", "The response is good.")


def self_reward_probes(config: SelfRewardDPOConfig, inputs: PlanInputs) -> list[Probe]:
    """A user `parse_reward` of the judge prompt (the stage's `reward_config`, else the plan's) on judge outputs."""
    parse = (config.reward_config or inputs.reward_config).parse_reward
    return pair_probes(config, inputs) + user_probe("reward_config.parse_reward", parse,
                                                    [(text,) for text in PROBE_JUDGEMENTS])


SELF_REWARD_STAGE = StageKind(name="self-reward-dpo", config=SelfRewardDPOConfig, run=run_self_reward,
                              check=check_self_reward, self_judged=True, answer_budget="response_max_new_tokens",
                              probes=self_reward_probes)
