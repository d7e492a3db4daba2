"""The experiment runner's arms (experiment/runner.py): each a way of making an iteration's preference pairs, as a stage
config built from the iteration's prompts, the task (`ExperimentTask`) and the shared settings (`ExperimentSettings`).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from self_rewarding_lm_pytorch import (
    ExternalRewardDPOConfig,
    JudgementsAgree,
    MetaRewardDPOConfig,
    SelfConsistencyDPOConfig,
    SelfRewardDPOConfig,
)


@dataclass
class Arm:
    """One way of making preference pairs: `stage(prompts, task, settings)` gives the iteration's stage config."""

    name: str
    stage: Callable[..., object]  # (prompts, ExperimentTask, ExperimentSettings) -> the iteration's stage config
    trains_meta_judge: bool = False  # the seed model must know the meta-judge's format (shared by every arm of the run)


def judgement_temperature(settings) -> float:
    return settings.temperature if settings.judge_temperature is None else settings.judge_temperature


def self_judge_arm(prompts, task, settings, **extra):
    """LLM-as-a-judge (Yuan et al. 2024): the model judges its own answers `num_judgements` times."""
    return SelfRewardDPOConfig(
        prompt_dataset=prompts, reward_config=task.reward_config, num_judgements=settings.num_judgements,
        judge_max_new_tokens=task.judge_max_new_tokens, judge_temperature=judgement_temperature(settings), judge_top_p=None,
        **settings.pair_kwargs(task, settings.num_judged_candidates), **settings.dpo_kwargs(), **extra,
    )


def self_judge_agreeing_arm(prompts, task, settings):
    """LLM-as-a-judge with consistency filtering: a pair stays only when all its judgements agree on its order."""
    return self_judge_arm(prompts, task, settings, pair_filters=(JudgementsAgree(1.0),))


def self_consistency_arm(prompts, task, settings):
    """ScPO (Prasad et al. 2024): most- vs least-voted answer, vote-margin threshold, margin-weighted loss."""
    return SelfConsistencyDPOConfig(
        prompt_dataset=prompts, answer_key=task.answer_key, min_vote_margin=settings.min_vote_margin,
        margin_weighted_loss=True, **settings.pair_kwargs(task), **settings.dpo_kwargs(),
    )


def meta_reward_arm(prompts, task, settings):
    """Meta-Rewarding (Wu et al. 2024): the self_judge arm whose judgements are also meta-judged (both orders of
    every pair of judgements of the most disputed answer); judge pairs train beside the actor pairs."""
    return MetaRewardDPOConfig(
        prompt_dataset=prompts, reward_config=task.reward_config, meta_judge_config=task.meta_judge_config,
        num_judgements=settings.num_judgements, judge_max_new_tokens=task.judge_max_new_tokens,
        judge_temperature=judgement_temperature(settings), judge_top_p=None, meta_judge_max_new_tokens=task.meta_judge_max_new_tokens,
        meta_judge_temperature=settings.meta_judge_temperature, length_control=settings.length_control,
        num_judge_pairs=settings.meta_num_judge_pairs,
        **settings.pair_kwargs(task, settings.num_judged_candidates),
        **settings.dpo_kwargs(),
    )


def checker_arm(prompts, task, settings):
    """The upper bound: the task's checker judges (it is not the model's own judgement)."""
    return ExternalRewardDPOConfig(
        prompt_dataset=prompts, reward_fn=lambda p, r: float(task.checker(p, r)),
        **settings.pair_kwargs(task), **settings.dpo_kwargs(),
    )


class RandomScores:
    """The control: a random score per candidate, so pairs are random pairs of the same candidates."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def __call__(self, prompt: str, response: str) -> float:
        return self.rng.random()


def random_arm(prompts, task, settings):
    # seeded by the number of prompts, so a resumed run draws the same scores
    return ExternalRewardDPOConfig(
        prompt_dataset=prompts, reward_fn=RandomScores(len(prompts)), **settings.pair_kwargs(task), **settings.dpo_kwargs(),
    )


DEFAULT_ARMS = (
    Arm("self_judge", self_judge_arm),
    Arm("self_judge_agree", self_judge_agreeing_arm),
    Arm("self_consistency", self_consistency_arm),
    Arm("checker", checker_arm),
    Arm("random", random_arm),
)
# arms a run includes only when asked for (`--arms meta_reward`): they change the shared seed model
OPTIONAL_ARMS = (Arm("meta_reward", meta_reward_arm, trains_meta_judge=True),)
