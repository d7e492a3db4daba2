"""Self-Rewarding Language Models (Yuan et al. 2024) and SPIN (Chen et al. 2024) on PyTorch + Accelerate.

The names a plan needs are here; everything else is imported from its subpackage (the README's file map).
"""

from self_rewarding_lm_pytorch.data.datasets import create_mock_dataset
from self_rewarding_lm_pytorch.data.fields import PairFields, PromptFields, SFTFields
from self_rewarding_lm_pytorch.generation.sampling import sample, top_p
from self_rewarding_lm_pytorch.generation.vllm_backend import VLLMConfig
from self_rewarding_lm_pytorch.judging.judge_prompt import RewardConfig
from self_rewarding_lm_pytorch.judging.meta_judge import MetaJudgeConfig
from self_rewarding_lm_pytorch.pairs.selection import JudgementsAgree, MarginAtLeast
from self_rewarding_lm_pytorch.pairs.stats import PairGenerationError
from self_rewarding_lm_pytorch.stages.external_reward import ExternalRewardDPOConfig
from self_rewarding_lm_pytorch.stages.meta_reward import MetaRewardDPOConfig
from self_rewarding_lm_pytorch.stages.paper import create_default_paper_config
from self_rewarding_lm_pytorch.stages.self_consistency import SelfConsistencyDPOConfig
from self_rewarding_lm_pytorch.stages.self_reward import SelfRewardDPOConfig
from self_rewarding_lm_pytorch.trainer import SelfRewardingTrainer
from self_rewarding_lm_pytorch.training.dpo import DPOConfig, DPOTrainer
from self_rewarding_lm_pytorch.training.early_stopping import EarlyStopper
from self_rewarding_lm_pytorch.training.sft import SFTConfig, SFTTrainer
from self_rewarding_lm_pytorch.training.spin import SelfPlayConfig, SPINTrainer

__all__ = [
    "DPOConfig",
    "DPOTrainer",
    "EarlyStopper",
    "ExternalRewardDPOConfig",
    "JudgementsAgree",
    "MarginAtLeast",
    "MetaJudgeConfig",
    "MetaRewardDPOConfig",
    "PairFields",
    "PairGenerationError",
    "PromptFields",
    "RewardConfig",
    "SFTConfig",
    "SFTFields",
    "SFTTrainer",
    "SPINTrainer",
    "SelfConsistencyDPOConfig",
    "SelfPlayConfig",
    "SelfRewardDPOConfig",
    "SelfRewardingTrainer",
    "VLLMConfig",
    "create_default_paper_config",
    "create_mock_dataset",
    "sample",
    "top_p",
]
