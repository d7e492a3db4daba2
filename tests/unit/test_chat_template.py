"""Prompts and judge prompts through the tokenizer's chat template; only the assistant's reply is decoded."""

import pytest
import torch

pytest.importorskip("transformers", reason="chat templates are HF tokenizers' (the [hf] extra)")

from tiny_chat import apply_chat, chat_tokenizer  # noqa: E402

from self_rewarding_lm_pytorch.models.hf import ChatTemplate, hf_tokenizer_functions  # noqa: E402


@pytest.mark.parametrize("system_prompt", [None, "be brief"])
def test_prompts_are_the_ids_apply_chat_template_gives(system_prompt):
    tokenizer = chat_tokenizer()
    encode, decode, eos_id = hf_tokenizer_functions(tokenizer, chat_template=True, system_prompt=system_prompt)
    messages = ([dict(role="system", content=system_prompt)] if system_prompt else []) + [dict(role="user", content="sort 3 1")]
    assert encode("sort 3 1").tolist() == apply_chat(tokenizer, messages, add_generation_prompt=True)
    assert eos_id == tokenizer.convert_tokens_to_ids("<|end|>")  # the template's end of turn, not </s>

    # the sampler hands back the generated tokens only; decoding stops at the end of the assistant's turn
    reply = tokenizer.encode("1 3", add_special_tokens=False)
    turn_after = tokenizer.encode("<|user|>more", add_special_tokens=False)
    assert decode(torch.tensor(reply + [eos_id] + turn_after + [-1, -1])) == "1 3"


def test_a_training_example_is_the_templated_conversation_with_the_prompt_masked():
    tokenizer = chat_tokenizer()
    conversation = [dict(role="user", content="sort 3 1"), dict(role="assistant", content="1 3")]
    ids, prompt_len = ChatTemplate(tokenizer, system_prompt="be brief").encode_example(conversation)
    system = [dict(role="system", content="be brief")]
    assert ids.tolist() == apply_chat(tokenizer, system + conversation, add_generation_prompt=False)
    assert prompt_len == len(apply_chat(tokenizer, system + conversation[:1], add_generation_prompt=True))
    assert tokenizer.decode(ids[prompt_len:]) == "1 3<|end|>"  # the reply and its end of turn train


def test_without_a_template_the_error_says_what_to_do():
    tokenizer = chat_tokenizer()
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="no chat_template"):
        hf_tokenizer_functions(tokenizer, chat_template=True)
    with pytest.raises(ValueError, match="system_prompt needs chat_template=True"):
        hf_tokenizer_functions(chat_tokenizer(), system_prompt="hi")
