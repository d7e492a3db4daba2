"""Datasets and batching shared by the stages.

An SFT item is `(seq, prompt_len)` or `(seq, prompt_mask)`, as in the original library: `seq` is a 1-D
tensor of token ids (it may end in padding), `prompt_len` the number of leading prompt tokens, or
`prompt_mask` True on the prompt prefix. Items are normalised to `(tokens, prompt_len)` with the
padding stripped, then right-padded per batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor
from torch.utils.data import Dataset


class MockDataset(Dataset):
    def __init__(self, length: int, output: Callable[[], Any] | Any):
        self.length = length
        self.output = output

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        return self.output() if callable(self.output) else self.output

    def fingerprint(self) -> str:
        """Its length and what makes its items (a random `output()` gives other items at every access)."""
        from self_rewarding_lm_pytorch.storage.fingerprint import describe

        return f"{self.length} x {describe(self.output)}"


def create_mock_dataset(length: int, output: Callable[[], Any] | Any) -> Dataset:
    """A dataset of `length` items, each `output()` (or `output` itself if it is not callable)."""
    return MockDataset(length, output)


def check_non_empty(dataset, name: str):
    if dataset is None or len(dataset) == 0:
        raise ValueError(f"{name} is empty: give it at least one example")


def as_token_tensor(value, what: str) -> Tensor:
    """A 1-D long tensor of token ids from a tensor, array or list; integral floats are accepted
    (the original README's `encode_str` returns a float tensor)."""
    tokens = torch.as_tensor(value)
    if tokens.ndim != 1:
        raise ValueError(f"{what} must be a 1-D sequence of token ids, got shape {tuple(tokens.shape)}")
    if tokens.is_floating_point():
        if not torch.equal(tokens, tokens.round()):
            raise ValueError(f"{what} holds non-integer values; token ids must be integers")
        tokens = tokens.long()
    if tokens.dtype == torch.bool or tokens.is_complex():
        raise ValueError(f"{what} must hold integer token ids, got dtype {tokens.dtype}")
    return tokens.long()


def strip_right_padding(tokens: Tensor, pad_id: int, what: str) -> Tensor:
    """Drop trailing `pad_id` tokens; a pad id followed by real tokens means the pad id is also a real
    token in use, which would silently drop data, so it is an error."""
    is_pad = tokens == pad_id
    if not is_pad.any():
        return tokens
    first_pad = int(is_pad.int().argmax())
    if not is_pad[first_pad:].all():
        raise ValueError(
            f"{what}: pad_id {pad_id} appears at position {first_pad} followed by other tokens, so it is also a "
            f"real token in use. Choose a pad_id outside the vocabulary (the default -1 is) or pad only at the end."
        )
    return tokens[:first_pad]


@dataclass
class PromptResponse:
    tokens: Tensor  # 1-D long, no padding
    prompt_len: int

    @property
    def prompt(self) -> Tensor:
        return self.tokens[: self.prompt_len]

    @property
    def response(self) -> Tensor:
        return self.tokens[self.prompt_len :]


def normalize_sft_item(item, pad_id: int, index: int | None = None) -> PromptResponse:
    what = "SFT item" if index is None else f"SFT item {index}"

    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise ValueError(f"{what} must be a pair (seq, prompt_len) or (seq, prompt_mask), got {type(item).__name__}")

    seq, prompt = item
    raw = as_token_tensor(seq, f"{what} seq")

    prompt = torch.as_tensor(prompt)
    if prompt.dtype == torch.bool:
        if prompt.shape != raw.shape:
            raise ValueError(f"{what}: prompt_mask has shape {tuple(prompt.shape)}, seq has {tuple(raw.shape)}")
        prompt_len = int(prompt.sum())
        if not prompt[:prompt_len].all():
            raise ValueError(f"{what}: prompt_mask must be True on a prefix of the sequence (the prompt) and False after")
    else:
        if prompt.numel() != 1:
            raise ValueError(f"{what}: prompt_len must be a single integer, got shape {tuple(prompt.shape)}")
        prompt_len = int(prompt.item())

    tokens = strip_right_padding(raw, pad_id, what)

    if prompt_len < 0 or prompt_len >= len(tokens):
        raise ValueError(
            f"{what}: prompt_len {prompt_len} leaves no response tokens in a sequence of {len(tokens)} "
            f"non-padding tokens; prompt_len must be in [0, {len(tokens) - 1}]"
        )

    return PromptResponse(tokens, prompt_len)


def pad_right(seqs: list[Tensor], pad_id: int) -> tuple[Tensor, Tensor]:
    """Stack 1-D sequences, right-padded with `pad_id`; returns (ids, is_padding)."""
    lengths = torch.tensor([len(s) for s in seqs])
    ids = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=pad_id)
    is_padding = torch.arange(ids.shape[-1])[None, :] >= lengths[:, None]
    return ids, is_padding


class SFTCollate:
    """Collate SFT items into `seq` (b, n) right-padded with `pad_id`, `prompt_len` (b,), `is_padding` (b, n)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, items) -> dict[str, Tensor]:
        examples = [normalize_sft_item(item, self.pad_id) for item in items]
        seq, is_padding = pad_right([ex.tokens for ex in examples], self.pad_id)
        prompt_len = torch.tensor([ex.prompt_len for ex in examples])
        return dict(seq=seq, prompt_len=prompt_len, is_padding=is_padding)


def validate_sft_dataset(dataset, pad_id: int, name: str = "train_dataset", max_checked: int = 64):
    """Fail at construction, not mid-training: check the dataset is non-empty and its first items are well formed."""
    check_non_empty(dataset, name)
    for index in range(min(len(dataset), max_checked)):
        normalize_sft_item(dataset[index], pad_id, index=index)
