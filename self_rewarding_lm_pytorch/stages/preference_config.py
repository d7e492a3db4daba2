"""What every preference stage's config has: `PreferenceStageConfig`, the pair-generation fields
(`PairGenerationConfig`) and the DPO fields (`DPOConfig`) as flat keyword arguments; and `pair_settings`, the fields
that make a stage's pairs. Each stage kind's config (in its module of this folder) subclasses it and says who
judges: the model itself, a reward model or function, or a vote of the candidates."""

from __future__ import annotations

from dataclasses import dataclass, fields

from torch.utils.data import Dataset

from self_rewarding_lm_pytorch.data.datasets import check_non_empty
from self_rewarding_lm_pytorch.pairs.config import PairGenerationConfig
from self_rewarding_lm_pytorch.training.dpo import DPOConfig


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
