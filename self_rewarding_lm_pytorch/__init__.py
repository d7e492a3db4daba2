"""Self-Rewarding Language Models (Yuan et al. 2024) and SPIN (Chen et al. 2024) on PyTorch + Accelerate."""

from self_rewarding_lm_pytorch.checkpoint import load_checkpoint, save_checkpoint
from self_rewarding_lm_pytorch.data import create_mock_dataset
from self_rewarding_lm_pytorch.dataset_fields import EFTFields, PairFields, PromptFields, SFTFields, plain_example_encoder
from self_rewarding_lm_pytorch.dpo import DPO, DPOConfig, DPOTrainer
from self_rewarding_lm_pytorch.dpo_reference import with_reference_logprobs
from self_rewarding_lm_pytorch.early_stopping import EarlyStopper
from self_rewarding_lm_pytorch.eft import (
    JudgeTrainingSet,
    five_point_targets,
    judge_mistakes,
    labelled_judge_examples,
    meta_judge_examples,
    own_answer_judge_examples,
    two_point_targets,
)
from self_rewarding_lm_pytorch.judges import Candidates, RewardFnJudge, RewardModelJudge, SelfJudge
from self_rewarding_lm_pytorch.integrity import CorruptFileError, DiskFullError
from self_rewarding_lm_pytorch.logprobs import sequence_logprobs
from self_rewarding_lm_pytorch.meta_judge import MetaJudge, MetaJudgeConfig
from self_rewarding_lm_pytorch.model_contract import ModelContractError
from self_rewarding_lm_pytorch.pair_generation import PairGenerationError, reward_within
from self_rewarding_lm_pytorch.pair_selection import JudgementsAgree, MarginAtLeast
from self_rewarding_lm_pytorch.preference_data import DPODataset
from self_rewarding_lm_pytorch.preference_loss import preference_loss
from self_rewarding_lm_pytorch.reward import RewardConfig
from self_rewarding_lm_pytorch.sampling import min_p, sample, top_k, top_p
from self_rewarding_lm_pytorch.sft import SFTConfig, SFTTrainer
from self_rewarding_lm_pytorch.self_consistency import SelfConsistencyJudge
from self_rewarding_lm_pytorch.sharding import fully_shard_model
from self_rewarding_lm_pytorch.spin import SPIN, SelfPlayConfig, SPINTrainer
from self_rewarding_lm_pytorch.stages import (
    ExternalRewardDPOConfig,
    MetaRewardDPOConfig,
    SelfConsistencyDPOConfig,
    SelfRewardDPOConfig,
    create_default_paper_config,
)
from self_rewarding_lm_pytorch.tracking import MetricsLogger
from self_rewarding_lm_pytorch.train_state import NonFiniteStepError
from self_rewarding_lm_pytorch.trainer import SelfRewardingTrainer
from self_rewarding_lm_pytorch.vllm_generation import VLLMConfig

__all__ = [
    "Candidates",
    "CorruptFileError",
    "DPO",
    "DPOConfig",
    "DPODataset",
    "DPOTrainer",
    "DiskFullError",
    "EFTFields",
    "EarlyStopper",
    "ExternalRewardDPOConfig",
    "JudgeTrainingSet",
    "JudgementsAgree",
    "MarginAtLeast",
    "MetaJudge",
    "MetaJudgeConfig",
    "MetaRewardDPOConfig",
    "MetricsLogger",
    "ModelContractError",
    "NonFiniteStepError",
    "PairFields",
    "PairGenerationError",
    "PromptFields",
    "RewardConfig",
    "RewardFnJudge",
    "RewardModelJudge",
    "SFTConfig",
    "SFTFields",
    "SFTTrainer",
    "SPIN",
    "SPINTrainer",
    "SelfConsistencyDPOConfig",
    "SelfConsistencyJudge",
    "SelfJudge",
    "SelfPlayConfig",
    "SelfRewardDPOConfig",
    "SelfRewardingTrainer",
    "VLLMConfig",
    "create_default_paper_config",
    "create_mock_dataset",
    "five_point_targets",
    "fully_shard_model",
    "judge_mistakes",
    "labelled_judge_examples",
    "load_checkpoint",
    "meta_judge_examples",
    "min_p",
    "own_answer_judge_examples",
    "plain_example_encoder",
    "preference_loss",
    "reward_within",
    "sample",
    "save_checkpoint",
    "sequence_logprobs",
    "top_k",
    "top_p",
    "two_point_targets",
    "with_reference_logprobs",
]
