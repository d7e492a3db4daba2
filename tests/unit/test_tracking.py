"""Trackers: the orchestrator opens and closes them; each stage logs under its own name at a growing global step."""

import pytest

pytest.importorskip("tensorboard", reason="the tracker test reads TensorBoard event files (the [tensorboard] extra)")


from conftest import tiny_transformer  # noqa: E402
from helpers import decode_tokens, encode_str, mock_sft_dataset

from self_rewarding_lm_pytorch import SelfRewardingTrainer, SFTConfig  # noqa: E402


def test_log_with_and_an_accelerator_of_ones_own_conflict(tmp_path):
    from accelerate import Accelerator

    with pytest.raises(ValueError, match="build that Accelerator with log_with"):
        SelfRewardingTrainer(tiny_transformer(), finetune_configs=[SFTConfig(train_dataset=mock_sft_dataset())],
                             tokenizer_encode=encode_str, tokenizer_decode=decode_tokens,
                             accelerator=Accelerator(cpu=True), log_with="tensorboard")
