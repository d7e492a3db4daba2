"""datasets.Dataset (or any map-style dataset of dicts) as SFT, EFT, prompt and DPO data, read by field name."""

import pytest
import torch

pytest.importorskip("transformers", reason="the chat template examples need HF tokenizers (the [hf] extra)")
datasets = pytest.importorskip("datasets", reason="datasets.Dataset inputs need the [datasets] extra")

from tiny_chat import apply_chat, chat_tokenizer  # noqa: E402

from self_rewarding_lm_pytorch.data.fields import PromptFields, SFTFields, plain_example_encoder
from self_rewarding_lm_pytorch.judging.eft import EFTFields
from self_rewarding_lm_pytorch.models.hf import ChatTemplate  # noqa: E402

# the paper's seed data: instruction-following (IFT) and evaluation (EFT) examples
IFT = [dict(instruction="sort 3 1", response="1 3"), dict(instruction="sort 9 2 5", response="2 5 9")]


def test_ift_rows_become_templated_examples():
    tokenizer = chat_tokenizer()
    sft = SFTFields(datasets.Dataset.from_list(IFT), ChatTemplate(tokenizer).encode_example,
                    prompt_field="instruction", response_field="response")
    ids, prompt_len = sft[1]
    user, reply = dict(role="user", content="sort 9 2 5"), dict(role="assistant", content="2 5 9")
    assert ids.tolist() == apply_chat(tokenizer, [user, reply], add_generation_prompt=False)
    assert prompt_len == len(apply_chat(tokenizer, [user], add_generation_prompt=True))


def test_plain_encoder_without_a_template():
    encode = lambda text: torch.tensor([ord(c) for c in text])  # noqa: E731
    sft = SFTFields(IFT, plain_example_encoder(encode, eos_id=0), prompt_field="instruction")
    ids, prompt_len = sft[0]
    assert ids.tolist() == [ord(c) for c in "sort 3 1"] + [ord(c) for c in "1 3"] + [0] and prompt_len == 8


def test_a_missing_field_names_itself_and_the_fields_there_are():
    rows = datasets.Dataset.from_list([dict(instruction="sort 3 1", output="1 3")])
    chat = ChatTemplate(chat_tokenizer())
    with pytest.raises(KeyError, match=r"no field 'prompt' \(prompt_field\); its fields are \['instruction', 'output'\]"):
        SFTFields(rows, chat.encode_example)
    with pytest.raises(KeyError, match=r"no field 'response' \(response_field\)"):
        SFTFields(rows, chat.encode_example, prompt_field="instruction")
    with pytest.raises(KeyError, match=r"no field 'text' \(prompt_field\)"):
        PromptFields(rows, prompt_field="text")
    with pytest.raises(KeyError, match=r"no field 'judgement' \(judgement_field\)"):
        EFTFields(rows, chat.encode_example, prompt_field="instruction", response_field="output")
