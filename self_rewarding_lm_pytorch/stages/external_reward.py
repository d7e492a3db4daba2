"""The external-reward DPO stage: candidates scored by a reward model or a reward function (e.g. an exact
checker), then DPO on best-vs-worst pairs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from self_rewarding_lm_pytorch.data.datasets import as_token_tensor
from self_rewarding_lm_pytorch.judging.judges import (
    Candidates,
    Judge,
    RewardFnJudge,
    RewardModelJudge,
    check_reward_fn_signature,
    check_reward_value,
)
from self_rewarding_lm_pytorch.stages.kind import PlanInputs, StageContext, StageKind
from self_rewarding_lm_pytorch.stages.preference import (
    PreferenceStageConfig,
    check_pair_filters,
    check_prompts,
    pair_probes,
    probe_answers,
    run_judged_stage,
    user_probe,
)
from self_rewarding_lm_pytorch.storage.probes import Probe
from self_rewarding_lm_pytorch.training.options import check_at_least_one

# a reward model scores this many candidates per forward unless told otherwise
DEFAULT_REWARD_MODEL_BATCH_SIZE = 32


@dataclass(kw_only=True)
class ExternalRewardDPOConfig(PreferenceStageConfig):
    """A DPO iteration whose pairs are judged by `reward_model` (a Module scoring token ids) or `reward_fn`
    (a callable on decoded prompt and response, e.g. an exact checker): exactly one of the two.
    `reward_model_batch_size`: candidates per reward-model call; None: 32. It applies to `reward_model` only."""

    reward_model: nn.Module | None = None
    reward_fn: Callable[[str, str], float | bool | None] | None = None
    reward_model_batch_size: int | None = None
    # the orchestrator calls reward_fn once, on the first prompt and an empty answer, when it is built, so a
    # function that fails or returns a non-number stops the run before any stage; False skips that call
    check_reward_fn_on_sample: bool = True

    def __post_init__(self):
        self.check_preference_stage()
        if (self.reward_model is None) == (self.reward_fn is None):
            raise ValueError("ExternalRewardDPOConfig needs exactly one of reward_model and reward_fn")
        if self.reward_fn is not None:
            check_reward_fn_signature(self.reward_fn, "ExternalRewardDPOConfig.reward_fn")
        if self.reward_model is not None and not isinstance(self.reward_model, nn.Module):
            raise TypeError(
                f"ExternalRewardDPOConfig.reward_model must be an nn.Module scoring token ids, got a "
                f"{type(self.reward_model).__name__}; for a Python function use reward_fn"
            )
        if self.reward_fn is not None and self.reward_model_batch_size is not None:
            raise ValueError("ExternalRewardDPOConfig.reward_model_batch_size applies to reward_model only: leave it "
                             "out with reward_fn")
        if self.reward_model is not None:
            if self.reward_model_batch_size is None:
                self.reward_model_batch_size = DEFAULT_REWARD_MODEL_BATCH_SIZE
            check_at_least_one(self, "reward_model_batch_size")


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


def external_reward_probes(config: ExternalRewardDPOConfig, inputs: PlanInputs) -> list[Probe]:
    """`reward_fn` on the probe answers (unless `check_reward_fn_on_sample=False`: it must not be called before the
    stage), or a reward model of the user's class on four of them, scored as the stage scores (rounded to 3
    significant digits: the last digits of a forward depend on the hardware)."""
    probes = pair_probes(config, inputs)
    if config.reward_fn is not None and config.check_reward_fn_on_sample:
        probes += user_probe("reward_fn", config.reward_fn, probe_answers(config))
    if config.reward_model is not None and user_probe("reward_model", config.reward_model, ()):
        judge = RewardModelJudge(config.reward_model, pad_id=inputs.pad_id, batch_size=1)

        def score(prompt: str, response: str) -> float:
            ids = [as_token_tensor(inputs.encode(text), "tokenizer_encode(probe text)") for text in (prompt, response)]
            candidates = Candidates(prompts=[prompt], prompt_ids=ids[:1], responses=[response], response_ids=ids[1:])
            return judge(candidates).scores[0, 0].item()

        probes.append(Probe("reward_model", score, tuple(probe_answers(config)[:4]), digits=3))
    return probes


EXTERNAL_REWARD_STAGE = StageKind(name="external-reward-dpo", config=ExternalRewardDPOConfig, run=run_external_reward,
                                  check=check_external_reward, answer_budget="response_max_new_tokens",
                                  probes=external_reward_probes)
