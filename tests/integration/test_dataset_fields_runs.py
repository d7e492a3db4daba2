"""datasets.Dataset (or any map-style dataset of dicts) as SFT, EFT, prompt and DPO data, read by field name."""

import pytest
import torch

pytest.importorskip("transformers", reason="the chat template examples need HF tokenizers (the [hf] extra)")
datasets = pytest.importorskip("datasets", reason="datasets.Dataset inputs need the [datasets] extra")

from tiny_chat import apply_chat, chat_tokenizer, tiny_llama  # noqa: E402
from torch.utils.data import ConcatDataset  # noqa: E402

from self_rewarding_lm_pytorch import DPOTrainer, RewardConfig, SFTConfig, SFTTrainer  # noqa: E402
from self_rewarding_lm_pytorch.data.fields import PairFields, PromptFields, SFTFields
from self_rewarding_lm_pytorch.judging.eft import EFTFields
from self_rewarding_lm_pytorch.models.hf import ChatTemplate, HFCausalLM  # noqa: E402

# the paper's seed data: instruction-following (IFT) and evaluation (EFT) examples
IFT = [dict(instruction="sort 3 1", response="1 3"), dict(instruction="sort 9 2 5", response="2 5 9")]
EFT = [dict(prompt="sort 3 1", response="3 1", judgement="not sorted. Score: 1"),
       dict(prompt="sort 3 1", response="1 3", judgement="sorted. Score: 5")]


def test_messages_eft_and_concatenation_train_with_sft():
    """Under 1 s idle."""
    tokenizer = chat_tokenizer()
    chat = ChatTemplate(tokenizer)
    conversations = datasets.Dataset.from_list([dict(messages=[dict(role="user", content=row["instruction"]),
                                                               dict(role="assistant", content=row["response"])])
                                                for row in IFT])
    from_messages = SFTFields(conversations, chat.encode_example, messages_field="messages")
    from_fields = SFTFields(IFT, chat.encode_example, prompt_field="instruction")  # a list of dicts works too
    assert all(torch.equal(from_messages[i][0], from_fields[i][0]) for i in range(2))

    reward_config = RewardConfig("Rate: {{ prompt }} -> {{ response }}")
    eft = EFTFields(datasets.Dataset.from_list(EFT), chat.encode_example, reward_config)
    ids, prompt_len = eft[0]
    messages = [dict(role="user", content="Rate: sort 3 1 -> 3 1"), dict(role="assistant", content="not sorted. Score: 1")]
    assert ids.tolist() == apply_chat(tokenizer, messages, add_generation_prompt=False)
    assert tokenizer.decode(ids[prompt_len:]) == "not sorted. Score: 1<|end|>"

    model = HFCausalLM(tiny_llama())
    before = [p.detach().clone() for p in model.parameters()]
    SFTTrainer(model, SFTConfig(train_dataset=ConcatDataset([from_messages, eft]), batch_size=4, num_train_steps=1,
                                learning_rate=1e-3, end_learning_rate=1e-4), accelerate_kwargs=dict(cpu=True)).train()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_prompts_and_pairs():
    """Under 1 s idle."""
    rows = datasets.Dataset.from_list([dict(question="sort 3 1", good="1 3", bad="3 1", messages=[
        dict(role="system", content="s"), dict(role="user", content="sort 3 1")])])
    assert PromptFields(rows, prompt_field="question")[0] == "sort 3 1"
    assert PromptFields(rows, messages_field="messages")[0] == "sort 3 1"

    tokenizer = chat_tokenizer()
    pairs = PairFields(rows, ChatTemplate(tokenizer).encode_example, prompt_field="question", chosen_field="good",
                       rejected_field="bad")
    pair = pairs[0]
    user = dict(role="user", content="sort 3 1")
    assert pair["chosen"].tolist() == apply_chat(tokenizer, [user, dict(role="assistant", content="1 3")], False)
    assert pair["prompt_len"] == len(apply_chat(tokenizer, [user], True))

    # TRL's conversational format: chosen and rejected hold whole conversations
    conversational = [dict(chosen=[user, dict(role="assistant", content="1 3")],
                           rejected=[user, dict(role="assistant", content="3 1")])] * 4
    from_conversations = PairFields(conversational, ChatTemplate(tokenizer).encode_example, prompt_field=None)
    assert torch.equal(from_conversations[0]["chosen"], pair["chosen"])
    trainer = DPOTrainer(HFCausalLM(tiny_llama()), from_conversations, batch_size=2, num_train_steps=1,
                         accelerate_kwargs=dict(cpu=True))
    assert trainer.train()[0]["loss"] == pytest.approx(0.6931, abs=1e-3)
