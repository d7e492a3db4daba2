"""Single-process checks of the sharding support (the sharded runs themselves are in test_multiprocess.py)."""

from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType
from x_transformers import Decoder, TransformerWrapper

from self_rewarding_lm_pytorch import sample
from self_rewarding_lm_pytorch.logprobs import reference_logprobs
from self_rewarding_lm_pytorch.sharding import check_supported_sharding, is_fully_sharded


def tiny():
    return TransformerWrapper(num_tokens=16, max_seq_len=16, attn_layers=Decoder(dim=8, depth=1, heads=1))


def test_an_unsharded_model_is_not_sharded_and_refuses_an_empty_prompt_list():
    model = tiny()
    assert not is_fully_sharded(model)
    # only a sharded model's rank may call the sampler with no rows (to run the other ranks' forwards)
    with pytest.raises(ValueError, match="no prompts"):
        sample(model, [], max_new_tokens=2)


def test_reference_logprobs_of_no_sequences_is_empty_without_a_forward():
    model = tiny()
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    assert reference_logprobs(model, [], torch.empty(0, dtype=torch.long), -1).shape == (0,)
    assert calls == []


@pytest.mark.parametrize("stage, refused", [(3, True), (2, False)])
def test_deepspeed_zero_3_is_refused_at_construction(stage, refused):
    accelerator = SimpleNamespace(distributed_type=DistributedType.DEEPSPEED,
                                  state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=stage)))
    if refused:
        with pytest.raises(NotImplementedError, match="SFTTrainer: DeepSpeed ZeRO-3 is not supported.*fsdp_version=2"):
            check_supported_sharding(accelerator, "SFTTrainer")
    else:
        check_supported_sharding(accelerator, "SFTTrainer")
