"""Self-Rewarding Language Models (Yuan et al. 2024) and SPIN (Chen et al. 2024) on PyTorch + Accelerate."""

from self_rewarding_lm_pytorch.checkpoint import load_checkpoint, save_checkpoint
from self_rewarding_lm_pytorch.data import create_mock_dataset
from self_rewarding_lm_pytorch.dpo import DPO, DPOConfig, DPOTrainer
from self_rewarding_lm_pytorch.early_stopping import EarlyStopper
from self_rewarding_lm_pytorch.logprobs import sequence_logprobs
from self_rewarding_lm_pytorch.model_contract import ModelContractError
from self_rewarding_lm_pytorch.pair_generation import PairGenerationError, reward_within
from self_rewarding_lm_pytorch.preference_data import DPODataset
from self_rewarding_lm_pytorch.preference_loss import preference_loss
from self_rewarding_lm_pytorch.reward import RewardConfig
from self_rewarding_lm_pytorch.sampling import min_p, sample, top_k, top_p
from self_rewarding_lm_pytorch.sft import SFTConfig, SFTTrainer
from self_rewarding_lm_pytorch.sharding import fully_shard_model
from self_rewarding_lm_pytorch.spin import SPIN, SelfPlayConfig, SPINTrainer
from self_rewarding_lm_pytorch.stages import ExternalRewardDPOConfig, SelfRewardDPOConfig, create_default_paper_config
from self_rewarding_lm_pytorch.trainer import SelfRewardingTrainer

__all__ = [
    "DPO",
    "DPOConfig",
    "DPODataset",
    "DPOTrainer",
    "EarlyStopper",
    "ExternalRewardDPOConfig",
    "ModelContractError",
    "PairGenerationError",
    "RewardConfig",
    "SFTConfig",
    "SFTTrainer",
    "SPIN",
    "SPINTrainer",
    "SelfPlayConfig",
    "SelfRewardDPOConfig",
    "SelfRewardingTrainer",
    "create_default_paper_config",
    "create_mock_dataset",
    "fully_shard_model",
    "load_checkpoint",
    "min_p",
    "preference_loss",
    "reward_within",
    "sample",
    "save_checkpoint",
    "sequence_logprobs",
    "top_k",
    "top_p",
]
