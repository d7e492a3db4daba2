"""Stage configs of the orchestrator, beyond `SFTConfig` (training/sft.py) and `SelfPlayConfig` (training/spin.py).

A preference stage makes its pairs, then trains DPO on them. Its config is a `PreferenceStageConfig`: the
pair-generation fields (`PairGenerationConfig`) and the DPO fields (`DPOConfig`) as flat keyword arguments, plus
what says who judges: the model itself (`SelfRewardDPOConfig`, `MetaRewardDPOConfig`), a reward model or function
(`ExternalRewardDPOConfig`), or a vote of the candidates (`SelfConsistencyDPOConfig`). Each stage kind validates
itself in its one `__post_init__`, at construction. `pair_settings` gives the fields that make a stage's pairs.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable, Hashable

from torch import nn
from torch.utils.data import Dataset

from self_rewarding_lm_pytorch.data.datasets import check_non_empty
from self_rewarding_lm_pytorch.training.dpo import DPOConfig
from self_rewarding_lm_pytorch.judging.meta_judge import MetaJudgeConfig
from self_rewarding_lm_pytorch.pairs.config import PairGenerationConfig
from self_rewarding_lm_pytorch.pairs.selection import MarginAtLeast, best_and_worst
from self_rewarding_lm_pytorch.judging.judge_prompt import RewardConfig
from self_rewarding_lm_pytorch.generation.sampling import check_sampling_settings
from self_rewarding_lm_pytorch.judging.self_consistency import stripped_response
from self_rewarding_lm_pytorch.training.options import check_at_least_one
from self_rewarding_lm_pytorch.training.sft import SFTConfig
from self_rewarding_lm_pytorch.training.spin import SelfPlayConfig

DEFAULT_REWARD_MODEL_BATCH_SIZE = 32


@dataclass(kw_only=True)
class PreferenceStageConfig(PairGenerationConfig, DPOConfig):
    """What every preference stage has: the prompts it answers (`prompt_dataset`), how it makes pairs from the
    answers (`PairGenerationConfig`'s fields) and how it trains on them (`DPOConfig`'s fields). Each stage kind
    subclasses it and runs `check_preference_stage()` first in its own `__post_init__`."""

    prompt_dataset: Dataset

    def __post_init__(self):
        self.check_preference_stage()

    def check_preference_stage(self):
        """Both groups' checks, and what a stage that makes its own pairs adds to them."""
        name = type(self).__name__
        check_non_empty(self.prompt_dataset, f"{name}.prompt_dataset")
        self.check_pair_generation()
        self.check_dpo_training()
        if self.temperature == 0:
            raise ValueError(
                f"{name}.temperature is 0 (greedy): the {self.num_candidate_responses} candidates of a prompt would all be "
                f"the same text, and a pair of the same text is dropped, so the stage would make no pair. Sample with a "
                f"temperature > 0 (the paper uses 0.7)"
            )
        if self.precompute_reference is not None:
            raise ValueError(
                f"{name}.precompute_reference does not apply: pair generation stores the reference log-probs with the "
                f"pairs; leave it at None"
            )
        if self.valid_every is not None:
            raise ValueError(
                f"{name}.valid_every has nothing to validate on: a preference stage makes its own pairs. Judge held-out "
                f"performance with an early_stopper, or the trainer's evaluate hook"
            )


# DPO's training settings: they change how a stage trains on its pairs, not the pairs. logp_reduction is not one of
# them, since the pairs store reference log-probs reduced by it.
_DPO_TRAINING_ONLY = frozenset(f.name for f in fields(DPOConfig)) - {"logp_reduction"}


def pair_settings(config: PreferenceStageConfig) -> dict[str, object]:
    """The fields of a preference stage config that make its pairs, by name: every field except DPO's training-only
    ones (the loop, the optimiser, the loss, early stopping; `logp_reduction` is kept: the stored reference log-probs
    use it). Two stages with equal pair settings, run from the same weights, seed and judge, make the same pairs."""
    if not isinstance(config, PreferenceStageConfig):
        raise TypeError(f"pair_settings takes a preference stage config (e.g. SelfRewardDPOConfig), got a "
                        f"{type(config).__name__}, which makes no pairs")
    return {f.name: getattr(config, f.name) for f in fields(config) if f.name not in _DPO_TRAINING_ONLY}


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


@dataclass(kw_only=True)
class MetaRewardDPOConfig(SelfRewardDPOConfig):
    """A Meta-Rewarding iteration (Wu et al. 2024, arXiv 2407.19594): a self-rewarding iteration whose judge learns
    too. The model answers (N candidates), judges each answer `num_judgements` times, and, as meta-judge, compares
    the judgements of the answer they disagree on most, every pair in both orders (`meta_judge_config`; None: the
    paper's prompt). Judge pairs: the best vs the worst judgement by Elo rating (fitted to the position-weighted
    verdicts, pairs/meta_rules.py), dropped when both give the same score or their ratings (log-odds units) differ by
    less than `min_meta_margin`. Actor pairs as in `SelfRewardDPOConfig`; with `length_control` rho in [0, 1), the
    shortest candidate scored within rho x (best - worst) of the best is chosen (the paper's length control; None:
    best vs worst). Up to `num_preference_pairs` actor pairs and `num_judge_pairs` judge pairs (None: as many as
    actor pairs) train together in one DPO run."""

    meta_judge_config: MetaJudgeConfig | None = None
    num_judge_pairs: int | None = None
    meta_judge_max_new_tokens: int = 256
    meta_judge_temperature: float = 0.0  # one verdict per order; greedy unless asked otherwise
    meta_judge_top_p: float | None = None
    meta_judge_batch_size: int = 16
    min_meta_margin: float | None = None
    length_control: float | None = None

    def __post_init__(self):
        self.check_preference_stage()
        self.check_self_judge()
        name = type(self).__name__
        if self.meta_judge_config is None:
            self.meta_judge_config = MetaJudgeConfig()
        elif not isinstance(self.meta_judge_config, MetaJudgeConfig):
            raise TypeError(f"{name}.meta_judge_config must be a MetaJudgeConfig, got a {type(self.meta_judge_config).__name__}")
        if self.num_judgements < 2:
            raise ValueError(f"{name}.num_judgements must be >= 2: the meta-judge compares two judgements of an answer, "
                             f"got {self.num_judgements}")
        if self.num_judge_pairs is None:
            self.num_judge_pairs = self.num_preference_pairs
        for field_name in ("num_judge_pairs", "meta_judge_max_new_tokens", "meta_judge_batch_size"):
            value = getattr(self, field_name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}.{field_name} must be an int >= 1, got {value!r}")
        check_sampling_settings(self, "meta_judge_temperature", "meta_judge_top_p")
        if self.min_meta_margin is not None and not self.min_meta_margin > 0:
            raise ValueError(f"{name}.min_meta_margin must be > 0 or None, got {self.min_meta_margin}")
        if self.length_control is not None:
            if not 0 <= self.length_control < 1:
                raise ValueError(f"{name}.length_control is the paper's rho, a share of the score range in [0, 1); got "
                                 f"{self.length_control} (None turns it off: best vs worst)")
            if self.pick_paired_rewards is not best_and_worst:
                raise ValueError(f"{name}: length_control picks the actor pairs; it cannot be combined with a custom "
                                 f"pick_paired_rewards. Pass one of the two")


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
        if self.reward_fn is not None and not callable(self.reward_fn):
            raise TypeError(
                f"ExternalRewardDPOConfig.reward_fn must be a callable (prompt: str, response: str) -> float | bool | "
                f"None, got a {type(self.reward_fn).__name__}"
            )
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


FinetuneConfig = (SFTConfig | SelfPlayConfig | SelfRewardDPOConfig | MetaRewardDPOConfig | ExternalRewardDPOConfig
                  | SelfConsistencyDPOConfig)


def create_default_paper_config(
    *,
    train_sft_dataset: Dataset,
    self_reward_prompt_dataset: Dataset | tuple[Dataset, Dataset],
    valid_sft_dataset: Dataset | None = None,
    num_generated_preference_pairs: tuple[int, int] = (3964, 6942),
    dpo_num_train_steps: int | None = None,
    dpo_num_epochs: int = 1,
    sft_config: dict | None = None,
    self_reward_config: dict | None = None,
    early_stopper=None,
) -> list[FinetuneConfig]:
    """The paper's plan (Yuan et al. 2024, section 3): SFT on the seed data (M1), then two self-rewarding
    iterations (M2 with 3,964 pairs, M3 with 6,942), each judging with the 0-5 additive prompt.

    `self_reward_prompt_dataset` is one dataset (both iterations draw from it; each uses its own prompt order)
    or a pair of datasets, one per iteration. DPO runs `dpo_num_train_steps`, or `dpo_num_epochs` over the
    pairs when no step count is given. Extra settings go in `sft_config` / `self_reward_config`."""
    if len(num_generated_preference_pairs) != 2:
        raise ValueError("num_generated_preference_pairs holds the pair counts of the two iterations, e.g. (3964, 6942)")
    prompt_datasets = (
        self_reward_prompt_dataset if isinstance(self_reward_prompt_dataset, tuple) else (self_reward_prompt_dataset,) * 2
    )
    dpo_length = dict(num_train_steps=dpo_num_train_steps) if dpo_num_train_steps else dict(num_epochs=dpo_num_epochs)
    stages: list[FinetuneConfig] = [
        SFTConfig(train_dataset=train_sft_dataset, valid_dataset=valid_sft_dataset, **(sft_config or {}))
    ]
    for num_pairs, prompts in zip(num_generated_preference_pairs, prompt_datasets):
        stages.append(
            SelfRewardDPOConfig(
                prompt_dataset=prompts,
                num_preference_pairs=num_pairs,
                early_stopper=early_stopper,
                **{**dpo_length, **(self_reward_config or {})},
            )
        )
    return stages
