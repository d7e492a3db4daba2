import os

import pytest
import torch
from x_transformers import Decoder, TransformerWrapper

# 2 threads on an idle 2-core machine; SELF_REWARDING_TEST_THREADS=1 where other work shares the cores (threads
# oversubscribed across processes run 10x slower)
torch.set_num_threads(int(os.environ.get("SELF_REWARDING_TEST_THREADS", "2")))


def tiny_transformer(num_tokens: int = 32, max_seq_len: int = 64, dim: int = 32, depth: int = 1, **decoder_kwargs):
    return TransformerWrapper(
        num_tokens=num_tokens,
        max_seq_len=max_seq_len,
        attn_layers=Decoder(dim=dim, depth=depth, heads=2, **decoder_kwargs),
    )


@pytest.fixture
def make_transformer():
    def make(seed: int = 0, **kwargs):
        torch.manual_seed(seed)
        return tiny_transformer(**kwargs)

    return make


@pytest.fixture
def char_model(make_transformer):
    """A tiny transformer over the bundled tasks' character vocabulary."""
    from self_rewarding_lm_pytorch.tasks.sort_digits import CharTokenizer

    return make_transformer(seed=0, num_tokens=CharTokenizer.num_tokens, max_seq_len=48, dim=32, depth=1)


class Crash(Exception):
    """A stand-in for a killed process."""


def crash_in_stage(n: int):
    """An `evaluate` hook that raises `Crash` at the end of the n-th stage it sees (1-based), before that stage's
    checkpoint is saved: the run is killed with stages 1..n-1 finished."""
    calls = 0

    def evaluate(model):
        nonlocal calls
        calls += 1
        if calls == n:
            raise Crash
        return {}

    return evaluate

