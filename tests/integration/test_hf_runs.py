"""HuggingFace models and tokenizers as the policy: tiny models built from configs, a tokenizer built here."""

import torch
from helpers import hf_char_tokenizer, tiny_hf_llama
from transformers import AutoModelForCausalLM  # noqa: E402

from self_rewarding_lm_pytorch import ExternalRewardDPOConfig, SelfRewardingTrainer, SFTConfig
from self_rewarding_lm_pytorch.models.hf import HFCausalLM, hf_tokenizer_functions  # noqa: E402
from self_rewarding_lm_pytorch.tasks.sort_digits import SortDigitsTask  # noqa: E402


def test_a_short_pipeline_with_an_hf_model_saves_both_formats(tmp_path):
    """About 1 s idle."""
    tokenizer = hf_char_tokenizer()
    encode, decode, eos_id = hf_tokenizer_functions(tokenizer)
    task = SortDigitsTask(length=3, seed=0)
    sft_data = [(torch.cat([encode(p), encode(r), torch.tensor([eos_id])]), len(encode(p)))
                for p, r in [(task.prompts(1)[0], " 1 2 3") for _ in range(16)]]
    model = HFCausalLM(tiny_hf_llama())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stages = [
        SFTConfig(train_dataset=sft_data, batch_size=8, learning_rate=1e-3, end_learning_rate=1e-4),
        ExternalRewardDPOConfig(prompt_dataset=task.prompts(16), reward_fn=lambda p, r: float(sum(map(ord, r))),
                                num_preference_pairs=4, prompt_batch_size=4, response_max_new_tokens=6, temperature=1.0,
                                num_train_steps=2, batch_size=4, learning_rate=1e-4, end_learning_rate=1e-5),
    ]
    SelfRewardingTrainer(model, finetune_configs=stages, tokenizer_encode=encode, tokenizer_decode=decode, eos_id=eos_id,
                         checkpoints_folder=tmp_path, accelerate_kwargs=dict(cpu=True))()
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "stage-01-external-reward-dpo.hf")
    for name, value in reloaded.state_dict().items():
        assert torch.equal(value, model.model.state_dict()[name]), name
