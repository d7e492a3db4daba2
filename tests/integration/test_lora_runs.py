"""LoRA adapters: only they train; the reference is the same model with its adapters off, live or stored."""

import copy

import pytest
import torch

pytest.importorskip("transformers", reason="LoRA runs on HF models (the [hf] extra)")
peft = pytest.importorskip("peft", reason="LoRA needs the [peft] extra")

from helpers import with_lora
from tiny_chat import tiny_llama  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from self_rewarding_lm_pytorch import DPOTrainer, ExternalRewardDPOConfig, SelfRewardingTrainer, SFTConfig
from self_rewarding_lm_pytorch.models.adapters import AdaptersOff  # noqa: E402
from self_rewarding_lm_pytorch.models.hf import HFCausalLM  # noqa: E402
from self_rewarding_lm_pytorch.storage.checkpoint import load_checkpoint  # noqa: E402
from self_rewarding_lm_pytorch.training.dpo_batches import DPOCollate
from self_rewarding_lm_pytorch.training.dpo_objective import DPO
from self_rewarding_lm_pytorch.training.logprobs import reference_logprobs  # noqa: E402


def pairs(n=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        prompt = torch.randint(4, 60, (5,), generator=generator)
        out.append(dict(chosen=torch.cat([prompt, torch.randint(4, 60, (4,), generator=generator)]),
                        rejected=torch.cat([prompt, torch.randint(4, 60, (3,), generator=generator)]), prompt_len=5))
    return out


def logps(model, batch):
    seqs = [p["chosen"] for p in batch]
    return reference_logprobs(model, seqs, torch.tensor([p["prompt_len"] for p in batch]), pad_id=-1)


def lora_names(model):
    return {name for name, p in model.named_parameters() if p.requires_grad}


def test_reference_is_the_base_model_live_and_stored_without_a_copy():
    """Under 1 s idle."""
    base_copy = HFCausalLM(tiny_llama())
    model = with_lora(tiny_llama())
    data = pairs()
    with torch.no_grad():
        on = torch.stack([model(p["chosen"][None])[0] for p in data])
        off = torch.stack([base_copy(p["chosen"][None])[0] for p in data])
    assert not torch.allclose(on, off, atol=1e-3)  # the adapters matter

    # stored reference log-probs (pair generation, SPIN) are the base model's
    assert torch.allclose(logps(model, data), logps(base_copy, data), atol=1e-5)

    # DPO's live reference is the same model with the adapters off: no parameter of its own, the same numbers
    dpo = DPO(model, beta=0.1)
    assert isinstance(dpo.ref_model, AdaptersOff) and list(dpo.ref_model.parameters()) == []
    assert sum(p.numel() for p in dpo.parameters()) == sum(p.numel() for p in model.parameters())
    batch = DPOCollate(-1)(data)
    dpo.train()
    assert model.training  # the reference's eval() does not reach the policy
    live = dpo.pair_values(**batch)
    stored = dpo.pair_values(**batch, chosen_ref_logp=logps(base_copy, data),
                             rejected_ref_logp=logps(base_copy, [dict(p, chosen=p["rejected"]) for p in data]))
    assert torch.allclose(live["loss"], stored["loss"], atol=1e-5)
    assert model.training


def test_dpo_trains_the_adapters_only():
    """Under 1 s idle."""
    model = with_lora(tiny_llama())
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer = DPOTrainer(model, pairs(16), batch_size=8, num_train_steps=3, learning_rate=1e-2, end_learning_rate=1e-3,
                         dropout=0.0, accelerate_kwargs=dict(cpu=True))
    assert isinstance(trainer.ref_model, AdaptersOff)  # LoRA: a live reference costs no memory, so no precompute
    history = trainer.train()
    assert abs(history[0]["loss"] - 0.6931) > 1e-3  # the policy (adapters on) differs from the reference already
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed == lora_names(model) and changed


def test_pipeline_with_lora_saves_adapters_and_exports_a_merged_model(tmp_path):
    """Under 1 s idle."""
    sft_data = [(torch.randint(4, 60, (10,)), 4) for _ in range(8)]
    model = with_lora(tiny_llama())
    base_before = {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}
    stages = [
        SFTConfig(train_dataset=sft_data, batch_size=4, grad_accum_steps=1, num_train_steps=2, learning_rate=1e-3,
                  end_learning_rate=1e-4),
        ExternalRewardDPOConfig(prompt_dataset=["ab", "cd", "ef", "gh"], reward_fn=lambda p, r: float(sum(map(ord, r)) % 7),
                                num_preference_pairs=2, prompt_batch_size=4, response_max_new_tokens=4, temperature=1.0,
                                num_train_steps=2, batch_size=2, learning_rate=1e-3, end_learning_rate=1e-4,
                                accept_fewer_pairs=True),
    ]
    encode = lambda text: torch.tensor([ord(c) % 50 + 4 for c in text])  # noqa: E731
    trainer = SelfRewardingTrainer(model, finetune_configs=stages, tokenizer_encode=encode,
                                   tokenizer_decode=lambda ids: "".join(chr(int(i) + 60) for i in ids),
                                   checkpoints_folder=tmp_path, accelerate_kwargs=dict(cpu=True))
    trainer()
    assert all(torch.equal(p, base_before[name]) for name, p in model.named_parameters() if not p.requires_grad)
    saved = torch.load(trainer.checkpoint_path(1), weights_only=True)
    assert set(saved["model"]) == lora_names(model)
    assert (tmp_path / "stage-01-external-reward-dpo.hf" / "adapter_model.safetensors").is_file()

    # the DPO stage's stored reference log-probs are the base model's (adapters off), like its live reference
    pairs_folder = trainer.pairs_folder(1)
    from self_rewarding_lm_pytorch.storage.pair_store import DPODataset

    stored = DPODataset(pairs_folder)[0]
    reloaded = copy.deepcopy(model)
    load_checkpoint(reloaded, trainer.checkpoint_path(0))  # the model at the start of the DPO stage
    base = HFCausalLM(reloaded.model.get_base_model())
    with reloaded.model.disable_adapter():
        chosen = stored["chosen"][stored["chosen"] != -1]
        expected = reference_logprobs(base, [chosen], torch.tensor([int(stored["prompt_len"])]), pad_id=-1)
    assert abs(float(stored["chosen_ref_logp"]) - float(expected[0])) < 1e-4

    ids = torch.randint(4, 60, (2, 7))
    with torch.no_grad():
        expected = model(ids)
    model.save_merged(tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert not any("lora" in name for name in merged.state_dict())
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, expected, atol=1e-4)


def lora_dpo(model, folder):
    torch.manual_seed(3)  # the same shuffled batches for every run
    return DPOTrainer(model, pairs(24), batch_size=8, num_train_steps=4, learning_rate=1e-2, end_learning_rate=1e-3,
                      dropout=0.0, checkpoint_every=2, checkpoint_folder=folder, accelerate_kwargs=dict(cpu=True))


def test_a_killed_lora_run_resumes_from_its_adapter_only_step_file(tmp_path):
    """The resumable state of a LoRA run holds the adapters only, and restores them: the resumed run ends with the
    uninterrupted run's adapters (the base weights never change). The same adapters on another base model are
    refused, naming the initial weights: the adapters were trained from that base, and it is the reference.
    About 1 s idle."""
    start = with_lora(tiny_llama())
    whole = copy.deepcopy(start)
    lora_dpo(whole, tmp_path / "whole").train()

    killed = copy.deepcopy(start)
    lora_dpo(killed, tmp_path / "killed").train()
    (tmp_path / "killed" / "dpo-step-4.pt").unlink()  # killed after step 3: the last save is step 2's
    saved = torch.load(tmp_path / "killed" / "dpo-step-2.pt", weights_only=True)
    assert set(saved["model"]) == lora_names(start) and saved["adapters_only"]

    with pytest.raises(ValueError, match=r"dpo-step-2.pt was saved by dpo .*\(changed: initial_weights\)"):
        lora_dpo(with_lora(tiny_llama(seed=1)), tmp_path / "killed").train()

    resumed = copy.deepcopy(start)
    history = lora_dpo(resumed, tmp_path / "killed").train()
    assert [row["step"] for row in history] == [1, 2, 3, 4]
    for (name, a), b in zip(whole.named_parameters(), resumed.parameters()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert any(not torch.equal(a, b) for a, b in zip(start.parameters(), resumed.parameters()))
