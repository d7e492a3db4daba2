"""Pair generation's degenerate cases: identical chosen / rejected texts, and zero pairs with accept_fewer_pairs."""

import random

import pytest
from helpers import generate

from self_rewarding_lm_pytorch.judging.judges import RewardFnJudge
from self_rewarding_lm_pytorch.pairs.stats import PairGenerationError
from self_rewarding_lm_pytorch.storage.pair_store import DPODataset
from self_rewarding_lm_pytorch.tasks.sort_digits import CharTokenizer, SortDigitsTask

TOKENIZER = CharTokenizer()


def noisy_judge(seed: int):
    """Different scores for the same text, as a sampled LLM judge gives."""
    draw = random.Random(seed)
    return lambda prompt, response: draw.random()


def test_pairs_with_identical_texts_are_dropped_and_counted(char_model, tmp_path):
    # greedy answers: every candidate of a prompt is the same text, and the noisy judge still ranks them
    prompts = SortDigitsTask(seed=1).prompts(8)
    with pytest.raises(PairGenerationError, match="8 pairs dropped as identical texts.*same text") as error:
        generate(char_model, prompts, RewardFnJudge(noisy_judge(0)), tmp_path / "greedy", temperature=0.0)
    assert error.value.stats.pairs_identical == 8 and error.value.num_pairs == 0

    # sampled answers: the pairs kept all differ, the dropped ones are counted
    stats = generate(char_model, SortDigitsTask(seed=2).prompts(64), RewardFnJudge(noisy_judge(1)), tmp_path / "sampled",
                     num_preference_pairs=16)
    records = DPODataset(tmp_path / "sampled").records()
    assert len(records) == 16 and all(r["chosen"] != r["rejected"] for r in records)
    assert stats.summary()["pairs_identical"] == stats.pairs_identical


def test_zero_pairs_with_accept_fewer_pairs_says_none_was_made_and_does_not_suggest_it(char_model, tmp_path):
    with pytest.raises(PairGenerationError, match="No pair was made") as error:
        generate(char_model, SortDigitsTask(seed=3).prompts(8), RewardFnJudge(lambda p, r: None), tmp_path,
                 accept_fewer_pairs=True)
    assert "accept_fewer_pairs" not in str(error.value) and error.value.num_pairs == 0
    assert "0 dropped by pair filters, 0 pairs dropped as identical" in str(error.value)  # no stray " ," without filters
