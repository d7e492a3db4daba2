"""Single-process checks of the sharding support (the sharded runs themselves are in test_multiprocess.py)."""

from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType
from x_transformers import Decoder, TransformerWrapper

from self_rewarding_lm_pytorch import sample
from self_rewarding_lm_pytorch.models.sharding import check_supported_sharding, is_fully_sharded
from self_rewarding_lm_pytorch.training.logprobs import reference_logprobs


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


def test_dpo_on_a_sharded_model_precomputes_the_reference_and_refuses_a_frozen_copy(monkeypatch):
    """Pairs without reference log-probs: a sharded model gets them computed before training (no reference model
    held), and asking for a live reference (a frozen copy, which a sharded model cannot have) fails at construction.
    (`is_fully_sharded` is stubbed: building the trainer is what is checked; the sharded runs are multi-process.)"""
    import self_rewarding_lm_pytorch.training.dpo as dpo

    monkeypatch.setattr(dpo, "is_fully_sharded", lambda model: True)
    model = lambda: TransformerWrapper(num_tokens=16, max_seq_len=16, attn_layers=Decoder(dim=32, depth=1, heads=2))
    pairs = [dict(chosen=torch.tensor([1, 2, 3, 4]), rejected=torch.tensor([1, 2, 5, 6]), prompt_len=2)] * 2
    kwargs = dict(batch_size=2, num_train_steps=1, accelerate_kwargs=dict(cpu=True))
    with pytest.raises(ValueError, match=r"DPOTrainer: the model is sharded.*precompute_reference is False"):
        dpo.DPOTrainer(model(), pairs, precompute_reference=False, **kwargs)
    trainer = dpo.DPOTrainer(model(), pairs, **kwargs)
    assert trainer.ref_model is None
    assert torch.isfinite(torch.tensor(trainer.train_loader.dataset[0]["chosen_ref_logp"])).all()
