"""Self-Rewarding Language Models (Yuan et al. 2024) and SPIN (Chen et al. 2024) on PyTorch + Accelerate."""

from self_rewarding_lm_pytorch.checkpoint import load_checkpoint, save_checkpoint
from self_rewarding_lm_pytorch.data import create_mock_dataset
from self_rewarding_lm_pytorch.logprobs import sequence_logprobs
from self_rewarding_lm_pytorch.model_contract import ModelContractError
from self_rewarding_lm_pytorch.sampling import min_p, sample, top_k, top_p
from self_rewarding_lm_pytorch.sft import SFTConfig, SFTTrainer

__all__ = [
    "ModelContractError",
    "SFTConfig",
    "SFTTrainer",
    "create_mock_dataset",
    "load_checkpoint",
    "min_p",
    "sample",
    "save_checkpoint",
    "sequence_logprobs",
    "top_k",
    "top_p",
]
