"""The orchestrator, and the original README's four examples with sizes shrunk."""

import pytest
from conftest import tiny_transformer
from helpers import decode_tokens, encode_str, mock_sft_dataset, small_dpo, small_pairs

from self_rewarding_lm_pytorch import (
    ExternalRewardDPOConfig,
    SelfPlayConfig,
    SelfRewardDPOConfig,
    SelfRewardingTrainer,
    SFTConfig,
)
from self_rewarding_lm_pytorch.tasks.sort_digits import SortDigitsTask

# the README's tokenizer functions, verbatim


def test_config_errors_surface_before_any_training(tmp_path):
    prompts = SortDigitsTask(seed=3).prompts(8)
    with pytest.raises(ValueError, match="num_train_steps"):
        SelfRewardDPOConfig(prompt_dataset=prompts, **small_pairs())  # no step count and no early stopper
    with pytest.raises(ValueError, match="exactly one of reward_model and reward_fn"):
        ExternalRewardDPOConfig(prompt_dataset=prompts, **small_pairs(), **small_dpo())
    with pytest.raises(ValueError, match="prompt_dataset is empty"):
        SelfRewardDPOConfig(prompt_dataset=[], **small_pairs(), **small_dpo())
    with pytest.raises(ValueError, match="valid_every has nothing to validate on"):
        SelfRewardDPOConfig(prompt_dataset=prompts, valid_every=10, **small_pairs(), **small_dpo())
    with pytest.raises(ValueError, match="unknown settings"):
        SelfPlayConfig(train_sft_dataset=mock_sft_dataset(), max_seq_len=16, spin_kwargs=dict(lam=0.1))
    with pytest.raises(TypeError, match="finetune_configs\\[1\\] is a dict"):
        SelfRewardingTrainer(tiny_transformer(), finetune_configs=[SFTConfig(train_dataset=mock_sft_dataset()), {}],
                             tokenizer_encode=encode_str, tokenizer_decode=decode_tokens, checkpoints_folder=tmp_path)
