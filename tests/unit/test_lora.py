"""LoRA adapters: only they train; the reference is the same model with its adapters off, live or stored."""


import pytest
import torch

pytest.importorskip("transformers", reason="LoRA runs on HF models (the [hf] extra)")
peft = pytest.importorskip("peft", reason="LoRA needs the [peft] extra")

from accelerate import Accelerator  # noqa: E402
from helpers import with_lora
from tiny_chat import tiny_llama  # noqa: E402

from self_rewarding_lm_pytorch.models.hf import HFCausalLM  # noqa: E402
from self_rewarding_lm_pytorch.storage.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from self_rewarding_lm_pytorch.training.logprobs import reference_logprobs  # noqa: E402
from self_rewarding_lm_pytorch.training.spin import SPINTrainer  # noqa: E402


def logps(model, batch):
    seqs = [p["chosen"] for p in batch]
    return reference_logprobs(model, seqs, torch.tensor([p["prompt_len"] for p in batch]), pad_id=-1)


def lora_names(model):
    return {name for name, p in model.named_parameters() if p.requires_grad}


def test_checkpoint_holds_the_adapters_and_restores_them(tmp_path):
    model = with_lora(tiny_llama(), seed=1)
    accelerator = Accelerator(cpu=True)
    save_checkpoint(accelerator, model, tmp_path / "a.pt", step=3)
    saved = torch.load(tmp_path / "a.pt", weights_only=True)
    assert set(saved["model"]) == lora_names(model) and saved["adapters_only"]

    other = with_lora(tiny_llama(), seed=2)  # the same base, other adapter values
    ids = torch.randint(4, 60, (2, 7))
    assert not torch.allclose(other(ids), model(ids))
    assert load_checkpoint(other, tmp_path / "a.pt") == dict(step=3)
    assert torch.allclose(other(ids), model(ids))

    with pytest.raises(ValueError, match="Attach the same adapters"):
        load_checkpoint(HFCausalLM(tiny_llama()), tmp_path / "a.pt")


def test_spin_stores_the_base_model_log_probs():
    base_copy = HFCausalLM(tiny_llama())
    model = with_lora(tiny_llama())
    data = [(torch.randint(4, 60, (9,)), 5) for _ in range(3)]
    spin = SPINTrainer(model, train_sft_dataset=data, max_seq_len=14, num_train_steps=1, batch_size=3,
                       accelerate_kwargs=dict(cpu=True))
    opponent = spin.opponent_pairs(data, iteration=0)
    expected = logps(base_copy, [dict(chosen=seq, prompt_len=n) for seq, n in data])
    assert torch.allclose(torch.tensor([p["chosen_ref_logp"] for p in opponent]), expected, atol=1e-5)


def test_early_stopper_keeps_and_restores_the_adapters_only():
    from self_rewarding_lm_pytorch import EarlyStopper

    model = with_lora(tiny_llama())
    scores = iter([1.0, 2.0])
    stopper = EarlyStopper(lambda m: next(scores), mode="min", patience=1)
    stopper(model)
    assert set(stopper.best_state_dict) == lora_names(model)  # not a second copy of the base weights
    best = {name: p.detach().clone() for name, p in model.named_parameters()}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(1.0)
    stopper(model)  # worse: the best stays the first
    stopper.restore_best(model)
    assert all(torch.equal(p, best[name]) for name, p in model.named_parameters())


def test_adapter_checkpoints_are_checksummed(tmp_path):
    from self_rewarding_lm_pytorch.storage.integrity import CorruptFileError

    model = with_lora(tiny_llama())
    save_checkpoint(Accelerator(cpu=True), model, tmp_path / "a.pt")
    data = bytearray((tmp_path / "a.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    (tmp_path / "a.pt").write_bytes(bytes(data))
    with pytest.raises(CorruptFileError):
        load_checkpoint(with_lora(tiny_llama()), tmp_path / "a.pt")
