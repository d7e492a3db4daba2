"""Map-style datasets of dicts (a `datasets.Dataset`, a list of dicts, ...) as the stages' datasets, by field name.

    chat = ChatTemplate(tokenizer)                                   # models/hf.py; or plain_example_encoder(encode, eos_id)
    seed = SFTFields(ds, chat.encode_example, prompt_field="instruction", response_field="response")   # IFT data
    seed = SFTFields(ds, chat.encode_example, messages_field="messages")                               # conversations
    prompts = PromptFields(ds, prompt_field="prompt")
    pairs = PairFields(ds, chat.encode_example, prompt_field="prompt", chosen_field="chosen", rejected_field="rejected")

(EFT data, the judge prompt over an item's answer: `judging.eft.EFTFields`.) Each wraps the dataset without copying it and turns an item into what the stage takes: SFT `(ids, prompt_len)`,
a prompt string, a DPO pair dict. Items are encoded when read. A field that is missing from the first item is
an error at construction that names the field, the option that names it, and the fields the items have.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Callable

import torch
from torch import Tensor
from torch.utils.data import Dataset

from self_rewarding_lm_pytorch.data.datasets import check_non_empty

# a conversation that ends with the assistant's reply -> (token ids, number of leading prompt tokens)
ExampleEncoder = Callable[[list[dict]], tuple[Tensor, int]]


def plain_example_encoder(tokenizer_encode: Callable[[str], Tensor], eos_id: int | None = None) -> ExampleEncoder:
    """An `ExampleEncoder` without a chat template: the user's text, the reply, then `eos_id` (when given)."""

    def encode_example(messages: list[dict]) -> tuple[Tensor, int]:
        roles = [m["role"] for m in messages]
        if roles != ["user", "assistant"]:
            raise ValueError(
                f"without a chat template an example is one user message and the assistant's reply, got roles {roles}; "
                f"use ChatTemplate(tokenizer).encode_example for conversations"
            )
        prompt = torch.as_tensor(tokenizer_encode(messages[0]["content"])).long()
        reply = torch.as_tensor(tokenizer_encode(messages[1]["content"])).long()
        end = torch.tensor([eos_id] if eos_id is not None else [], dtype=torch.long)
        return torch.cat([prompt, reply, end]), len(prompt)

    return encode_example


class FieldDataset(Dataset):
    """A map-style dataset of dicts read through named fields."""

    def __init__(self, dataset, fields: dict[str, str | None]):
        self.dataset = dataset
        self.fields = {option: name for option, name in fields.items() if name is not None}
        check_non_empty(dataset, type(self).__name__)
        first = dataset[0]
        if not isinstance(first, Mapping):
            raise TypeError(f"{type(self).__name__} reads dicts by field name; item 0 is a {type(first).__name__}")
        for option, name in self.fields.items():
            self.field(first, option, 0)

    def __len__(self) -> int:
        return len(self.dataset)

    def field(self, item: Mapping, option: str, index: int):
        name = self.fields[option]
        if name not in item:
            raise KeyError(
                f"{type(self).__name__}: item {index} has no field {name!r} ({option}); its fields are "
                f"{sorted(item)}. Pass {option}=<one of them>"
            )
        return item[name]

    def conversation(self, item: Mapping, index: int) -> list[dict]:
        """The item as messages ending with the assistant's reply (from messages_field, or prompt + response)."""
        if "messages_field" in self.fields:
            messages = [dict(m) for m in self.field(item, "messages_field", index)]
            if not messages or messages[-1].get("role") != "assistant":
                raise ValueError(f"{type(self).__name__}: item {index}'s messages must end with an assistant message")
            return messages
        return [dict(role="user", content=self.user_text(item, index)),
                dict(role="assistant", content=self.field(item, "response_field", index))]

    def user_text(self, item: Mapping, index: int) -> str:
        return self.field(item, "prompt_field", index)


class SFTFields(FieldDataset):
    """SFT examples `(ids, prompt_len)` from `prompt_field` + `response_field` (the paper's IFT seed data: an
    instruction and its response), or from `messages_field` (a conversation ending in the assistant's reply)."""

    def __init__(self, dataset, encode_example: ExampleEncoder, *, prompt_field: str = "prompt",
                 response_field: str = "response", messages_field: str | None = None):
        self.encode_example = encode_example
        if messages_field is not None:
            super().__init__(dataset, dict(messages_field=messages_field))
        else:
            super().__init__(dataset, dict(prompt_field=prompt_field, response_field=response_field))

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.encode_example(self.conversation(self.dataset[index], index))


class PromptFields(FieldDataset):
    """Prompt strings for pair generation, from `prompt_field`, or from `messages_field` (the last user message)."""

    def __init__(self, dataset, *, prompt_field: str = "prompt", messages_field: str | None = None):
        fields = dict(messages_field=messages_field) if messages_field is not None else dict(prompt_field=prompt_field)
        super().__init__(dataset, fields)
        self.__getitem__(0)  # the first prompt is a string, or the error says what it is

    def __getitem__(self, index: int) -> str:
        item = self.dataset[index]
        if "messages_field" in self.fields:
            users = [m["content"] for m in self.field(item, "messages_field", index) if m.get("role") == "user"]
            if not users:
                raise ValueError(f"PromptFields: item {index}'s messages have no user message")
            prompt = users[-1]
        else:
            prompt = self.field(item, "prompt_field", index)
        if not isinstance(prompt, str):
            raise TypeError(f"PromptFields: item {index}'s prompt is a {type(prompt).__name__}, not a string")
        return prompt


def prompt_type_error(item, where: str) -> TypeError:
    """The error for `where` (e.g. `prompt_dataset[0]`), an item of a prompt dataset that is not a string: it says
    how to turn the dataset into prompt strings (a dataset of dicts: `PromptFields` with one of the item's keys)."""
    fix = "pass the prompts as text"
    if isinstance(item, Mapping):
        keys = sorted(map(str, item))
        prompt_key = next((key for key in ("prompt", "instruction", "question") if key in keys), None)
        how = (f"prompt_field={prompt_key!r}" if prompt_key else "messages_field='messages'" if "messages" in keys
               else "prompt_field=<the key of the prompt text>")
        fix = (f"wrap a dataset of dicts (its items' keys: {keys}) in PromptFields, which reads each prompt string by "
               f"its key: PromptFields(dataset, {how})")
    elif isinstance(item, Tensor):
        fix = "prompts are text, encoded by the stage: decode the token ids, or pass the prompt strings"
    return TypeError(f"{where} is a {type(item).__name__}; prompt datasets hold strings (each is encoded with "
                     f"tokenizer_encode): {fix}")


class PairFields(FieldDataset):
    """DPO pairs `dict(chosen, rejected, prompt_len)` from `prompt_field` with `chosen_field` and `rejected_field`
    (the two responses as strings), or from `chosen_field` and `rejected_field` alone as conversations ending in
    the two replies (TRL's conversational format: pass prompt_field=None)."""

    def __init__(self, dataset, encode_example: ExampleEncoder, *, prompt_field: str | None = "prompt",
                 chosen_field: str = "chosen", rejected_field: str = "rejected"):
        self.encode_example = encode_example
        super().__init__(dataset, dict(prompt_field=prompt_field, chosen_field=chosen_field, rejected_field=rejected_field))

    def __getitem__(self, index: int) -> dict:
        item = self.dataset[index]
        encoded = {}
        for side in ("chosen", "rejected"):
            answer = self.field(item, f"{side}_field", index)
            if "prompt_field" in self.fields:
                messages = [dict(role="user", content=self.field(item, "prompt_field", index)),
                            dict(role="assistant", content=answer)]
            else:
                messages = [dict(m) for m in answer]
            encoded[side] = self.encode_example(messages)
        (chosen, prompt_len), (rejected, rejected_prompt_len) = encoded["chosen"], encoded["rejected"]
        if prompt_len != rejected_prompt_len or not torch.equal(chosen[:prompt_len], rejected[:prompt_len]):
            raise ValueError(f"PairFields: item {index}'s chosen and rejected conversations have different prompts")
        return dict(chosen=chosen, rejected=rejected, prompt_len=prompt_len)
