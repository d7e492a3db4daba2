"""Prompts and judge prompts through the tokenizer's chat template; only the assistant's reply is decoded."""

import pytest

pytest.importorskip("transformers", reason="chat templates are HF tokenizers' (the [hf] extra)")

from tiny_chat import apply_chat, chat_tokenizer, tiny_llama  # noqa: E402

from self_rewarding_lm_pytorch import RewardConfig, SelfRewardDPOConfig, SelfRewardingTrainer
from self_rewarding_lm_pytorch.generation.backend import LibrarySampler  # noqa: E402
from self_rewarding_lm_pytorch.models.hf import HFCausalLM, hf_tokenizer_functions  # noqa: E402
from self_rewarding_lm_pytorch.storage.pair_store import DPODataset


def test_self_rewarding_stage_renders_task_and_judge_prompts_with_the_template(tmp_path):
    """Under 1 s idle."""
    tokenizer = chat_tokenizer()
    encode, decode, eos_id = hf_tokenizer_functions(tokenizer, chat_template=True, system_prompt="answer")
    judge_encode, _, _ = hf_tokenizer_functions(tokenizer, chat_template=True, system_prompt="judge")
    judge_inputs = []

    class RecordingSampler(LibrarySampler):  # every generating call's prompts (candidates' and judges')
        def __call__(self, model, prompts, *args, shared_prefix=None, **kwargs):
            prefix = [] if shared_prefix is None else shared_prefix.tolist()
            judge_inputs.extend(prefix + p.tolist() for p in prompts)
            return super().__call__(model, prompts, *args, shared_prefix=shared_prefix, **kwargs)
    # an untrained model writes no "Score: N": this parser scores any answer, so pairs get made
    reward_config = RewardConfig("rate: {{ prompt }} / {{ response }}", parse_reward=lambda text: float(len(text) % 5))
    stage = SelfRewardDPOConfig(
        prompt_dataset=["sort 3 1", "sort 2 9", "sort 5 4", "sort 8 7"], reward_config=reward_config,
        num_preference_pairs=2, num_candidate_responses=3, prompt_batch_size=4, response_max_new_tokens=5,
        temperature=1.0, num_judgements=1, judge_max_new_tokens=3, batch_size=2, num_train_steps=1,
        learning_rate=1e-4, end_learning_rate=1e-5, accept_fewer_pairs=True,
    )
    trainer = SelfRewardingTrainer(HFCausalLM(tiny_llama()), finetune_configs=[stage], tokenizer_encode=encode,
                                   tokenizer_decode=decode, judge_tokenizer_encode=judge_encode, eos_id=eos_id,
                                   checkpoints_folder=tmp_path, accelerate_kwargs=dict(cpu=True),
                                   generation_backend=RecordingSampler())
    trainer()

    pairs = DPODataset(trainer.pairs_folder(0))
    assert len(pairs) >= 1
    for pair, record in zip(pairs, pairs.records()):
        messages = [dict(role="system", content="answer"), dict(role="user", content=record["prompt"])]
        expected = apply_chat(tokenizer, messages, add_generation_prompt=True)
        assert pair["chosen"][: pair["prompt_len"]].tolist() == expected
        # the chosen reply was judged through the judge's own template
        judge_messages = [dict(role="system", content="judge"),
                          dict(role="user", content=reward_config.render(record["prompt"], record["chosen"]))]
        assert apply_chat(tokenizer, judge_messages, add_generation_prompt=True) in judge_inputs
        assert "<|" not in record["chosen"]  # special tokens of the template are not part of the reply
