"""Non-finite steps, non-finite stages and changed plans: stopped or refused with what happened and the way out."""

import pytest
import torch
from conftest import tiny_transformer

from self_rewarding_lm_pytorch import ExternalRewardDPOConfig, SelfRewardingTrainer, SFTConfig, SFTTrainer
from self_rewarding_lm_pytorch.tasks.sort_digits import CharTokenizer, SortDigitsTask

TOKENIZER = CharTokenizer()


def sft(model, folder, **overrides):
    data = SortDigitsTask(length=3, seed=0).instruction_examples(16)
    settings = dict(train_dataset=data, batch_size=4, grad_accum_steps=1, num_train_steps=4, learning_rate=1e-3,
                    end_learning_rate=1e-4, checkpoint_every=2) | overrides
    return SFTTrainer(model, accelerate_kwargs=dict(cpu=True), checkpoint_folder=folder, **settings)


def plan_trainer(folder, reward_fn, encode=TOKENIZER.encode, evaluate=None, seed=0):
    task = SortDigitsTask(length=3, seed=3)
    torch.manual_seed(seed)
    model = tiny_transformer(num_tokens=TOKENIZER.num_tokens, max_seq_len=48)
    stages = [
        SFTConfig(train_dataset=task.instruction_examples(8), batch_size=8, learning_rate=1e-3, end_learning_rate=1e-4),
        ExternalRewardDPOConfig(prompt_dataset=task.prompts(16), reward_fn=reward_fn, temperature=1.0, num_preference_pairs=2,
                                prompt_batch_size=4, response_max_new_tokens=6, batch_size=2, num_train_steps=1),
    ]
    return SelfRewardingTrainer(model, finetune_configs=stages, tokenizer_encode=encode, tokenizer_decode=TOKENIZER.decode,
                                eos_id=TOKENIZER.eos_id, accelerate_kwargs=dict(cpu=True), checkpoints_folder=folder,
                                evaluate=evaluate)


def digits(prompt, response):
    return float(sum(c.isdigit() for c in response))


def test_a_stage_with_non_finite_weights_is_not_saved_as_finished(tmp_path):
    def blow_up(model):
        next(model.parameters()).data.fill_(float("nan"))
        return {}

    with pytest.raises(FloatingPointError, match="stage 0 .* non-finite weights"):
        plan_trainer(tmp_path, digits, evaluate=blow_up)()
    assert not (tmp_path / "stage-00-sft.pt").exists()


@pytest.mark.parametrize("eos_id, pad_id, message", [(-2, -1, "outside the model's vocabulary"),
                                                     (TOKENIZER.num_tokens, -1, "outside the model's vocabulary"),
                                                     (5, 5, "eos_id and pad_id are both 5")])
def test_impossible_eos_ids_are_refused_at_construction(tmp_path, eos_id, pad_id, message):
    with pytest.raises(ValueError, match=message):
        SelfRewardingTrainer(tiny_transformer(num_tokens=TOKENIZER.num_tokens), finetune_configs=plan_trainer(tmp_path, digits).stages,
                             tokenizer_encode=TOKENIZER.encode, tokenizer_decode=TOKENIZER.decode, eos_id=eos_id,
                             pad_id=pad_id, checkpoints_folder=tmp_path)
