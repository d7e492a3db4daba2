"""The stage kinds the orchestrator knows, and the construction check of a whole plan.

Each kind is declared once, in its own module of this folder (config, runner, judge, checks); a new kind is a new
module and one line in `STAGE_KINDS`.
"""

from __future__ import annotations

from self_rewarding_lm_pytorch.data.config_types import check_field_types
from self_rewarding_lm_pytorch.generation.sampling import warn_missing_eos
from self_rewarding_lm_pytorch.stages.external_reward import EXTERNAL_REWARD_STAGE, ExternalRewardDPOConfig
from self_rewarding_lm_pytorch.stages.kind import PlanInputs, StageKind
from self_rewarding_lm_pytorch.stages.meta_reward import META_REWARD_STAGE, MetaRewardDPOConfig
from self_rewarding_lm_pytorch.stages.self_consistency import SELF_CONSISTENCY_STAGE, SelfConsistencyDPOConfig
from self_rewarding_lm_pytorch.stages.self_reward import SELF_REWARD_STAGE, SelfRewardDPOConfig
from self_rewarding_lm_pytorch.stages.sft import SFT_STAGE
from self_rewarding_lm_pytorch.stages.spin import SPIN_STAGE
from self_rewarding_lm_pytorch.training.sft import SFTConfig
from self_rewarding_lm_pytorch.training.spin import SelfPlayConfig

STAGE_KINDS: tuple[StageKind, ...] = (SFT_STAGE, SPIN_STAGE, SELF_REWARD_STAGE, META_REWARD_STAGE,
                                      EXTERNAL_REWARD_STAGE, SELF_CONSISTENCY_STAGE)
_BY_CONFIG = {kind.config: kind for kind in STAGE_KINDS}

# what `SelfRewardingTrainer(finetune_configs=[...])` takes: a config of any kind above
FinetuneConfig = (SFTConfig | SelfPlayConfig | SelfRewardDPOConfig | MetaRewardDPOConfig | ExternalRewardDPOConfig
                  | SelfConsistencyDPOConfig)


def kind_of(config) -> StageKind | None:
    """The kind whose config class `config` is (exactly: a subclass is a kind of its own), or None."""
    return _BY_CONFIG.get(type(config))


def check_known_kinds(configs: list):
    for index, config in enumerate(configs):
        if kind_of(config) is None:
            known = ", ".join(kind.config.__name__ for kind in STAGE_KINDS)
            raise TypeError(f"finetune_configs[{index}] is a {type(config).__name__}; stages are one of {known}")


def check_plan(configs: list, inputs: PlanInputs, eos_id: int | None):
    """Raise at construction for inputs a stage would fail on when it starts (each error names the stage index,
    the field and the fix); warn once when stages generate and there is no eos_id."""
    for index, config in enumerate(configs):
        kind, stage = kind_of(config), f"finetune_configs[{index}] ({type(config).__name__})"
        check_field_types(config, stage)  # again: a field may have been set after the config was built
        if kind.check is not None:
            kind.check(stage, config, inputs)
    generating = [(index, config, kind_of(config).answer_budget) for index, config in enumerate(configs)
                  if kind_of(config).answer_budget is not None]
    if eos_id is None and generating:
        index, config, budget = generating[0]
        warn_missing_eos(f"stage {index} ({type(config).__name__})", f"{budget}={getattr(config, budget)}")
