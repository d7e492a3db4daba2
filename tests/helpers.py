"""Helpers shared by several test files (unit and integration): tiny pair generation, sorted-digit DPO pairs,
and the small settings and byte-level tokenizer of the orchestrator's tests."""

import random

import torch
from accelerate import Accelerator
from torch import Tensor

from self_rewarding_lm_pytorch import create_mock_dataset
from self_rewarding_lm_pytorch.pairs.config import PairGenerationConfig
from self_rewarding_lm_pytorch.pairs.loop import generate_preference_pairs
from self_rewarding_lm_pytorch.tasks.sort_digits import CharTokenizer, make_prompt, solve

TOKENIZER = CharTokenizer()


def generate(model, prompts, judge, folder, **config_kwargs):
    """Pairs of `model`'s answers to `prompts` judged by `judge`, in `folder`, with small settings."""
    config = PairGenerationConfig(**{**dict(num_preference_pairs=4, prompt_batch_size=4, response_max_new_tokens=6,
                                             temperature=1.0, top_p=None), **config_kwargs})
    return generate_preference_pairs(
        model, prompts, judge, config, folder=folder, tokenizer_encode=TOKENIZER.encode,
        tokenizer_decode=TOKENIZER.decode, accelerator=Accelerator(cpu=True), pad_id=-1, eos_id=TOKENIZER.eos_id,
    )


def sort_pairs(n, seed, length=3, tokenizer=TOKENIZER):
    """chosen: the digits sorted; rejected: sorted the wrong way round (a repeated digit set gives a tie, kept)."""
    rng, eos = random.Random(seed), torch.tensor([tokenizer.eos_id])
    pairs = []
    for _ in range(n):
        digits = [rng.randint(1, 9) for _ in range(length)]
        prompt = tokenizer.encode(make_prompt(digits))
        wrong = " " + " ".join(map(str, sorted(digits, reverse=True)))
        pairs.append(dict(
            chosen=torch.cat([prompt, tokenizer.encode(solve(digits)), eos]),
            rejected=torch.cat([prompt, tokenizer.encode(wrong), eos]),
            prompt_len=torch.tensor(len(prompt)),
        ))
    return pairs


def decode_tokens(tokens: Tensor) -> str:
    decode_token = lambda token: str(chr(max(32, token)))
    return "".join(list(map(decode_token, tokens)))


def encode_str(seq_str: str) -> Tensor:
    return Tensor(list(map(ord, seq_str)))


def mock_sft_dataset(length=16, seq_len=24):
    return create_mock_dataset(length, lambda: (torch.randint(0, 256, (seq_len,)), torch.tensor(1)))


def small_dpo(**overrides):
    return dict(dict(batch_size=4, num_train_steps=2, learning_rate=1e-4, end_learning_rate=1e-5), **overrides)


def small_pairs(**overrides):
    return dict(dict(num_preference_pairs=4, prompt_batch_size=4, response_max_new_tokens=6), **overrides)


def checksum(prompt: str, response: str) -> float:
    """An external reward that tells an untrained model's random answers apart (the checker scores them all 0)."""
    return float(sum(map(ord, response)) % 7)
