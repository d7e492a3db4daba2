"""Non-finite steps, non-finite stages and changed plans: stopped or refused with what happened and the way out."""

import pytest
from conftest import tiny_transformer
from helpers import count_digits, plan_trainer

from self_rewarding_lm_pytorch import SelfRewardingTrainer
from self_rewarding_lm_pytorch.tasks.sort_digits import CharTokenizer

TOKENIZER = CharTokenizer()


@pytest.mark.parametrize("eos_id, pad_id, message", [(-2, -1, "outside the model's vocabulary"),
                                                     (TOKENIZER.num_tokens, -1, "outside the model's vocabulary"),
                                                     (5, 5, "eos_id and pad_id are both 5")])
def test_impossible_eos_ids_are_refused_at_construction(tmp_path, eos_id, pad_id, message):
    with pytest.raises(ValueError, match=message):
        SelfRewardingTrainer(tiny_transformer(num_tokens=TOKENIZER.num_tokens), finetune_configs=plan_trainer(tmp_path, count_digits).stages,
                             tokenizer_encode=TOKENIZER.encode, tokenizer_decode=TOKENIZER.decode, eos_id=eos_id,
                             pad_id=pad_id, checkpoints_folder=tmp_path)
