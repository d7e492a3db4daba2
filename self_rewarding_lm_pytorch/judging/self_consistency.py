"""The self-consistency judge (ScPO: Prasad et al. 2024, arXiv 2411.04109): no judge prompt at all.

The model's N sampled answers to one prompt vote: each candidate's score is the share of the N candidates whose
answer agrees with it, V(y) / N. Errors of a model tend to scatter while its right answers agree, so the most
voted answer is more often right than a random one, even for a model too small to judge its own answers. Best vs
worst then pairs the most consistent answer with the least consistent one; the paper's vote-margin threshold is
the pair filter `MarginAtLeast`, and its margin-weighted loss is `DPOConfig.margin_weighted_loss`.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable, Hashable

import torch

from self_rewarding_lm_pytorch.judging.judges import Candidates, Judgements


def stripped_response(response: str) -> str:
    """The default answer key: the response without surrounding whitespace."""
    return response.strip()


class SelfConsistencyJudge:
    """Scores each candidate by the share of its prompt's candidates whose `answer_key` is equal to its own.

    `answer_key(response) -> hashable | None` extracts the final answer (e.g. the number after "The answer is");
    None means the response has no answer: it gets no vote and no score (NaN), and counts in no one's share.
    The share is over all N candidates, answered or not, as V(y) / N in the paper."""

    num_judgements = 1

    def __init__(self, answer_key: Callable[[str], Hashable | None] = stripped_response):
        if not callable(answer_key):
            raise TypeError(f"SelfConsistencyJudge.answer_key must be callable, got {type(answer_key).__name__}")
        self.answer_key = answer_key

    def __call__(self, candidates: Candidates, seed: int | None = None) -> Judgements:
        n = candidates.num_per_prompt
        if len(candidates.responses) % n:
            raise ValueError(f"{len(candidates.responses)} candidates do not split into groups of {n} per prompt")
        keys = [self.answer_key(response) for response in candidates.responses]
        scores = []
        for start in range(0, len(keys), n):
            group = keys[start : start + n]
            votes = Counter(key for key in group if key is not None)
            scores += [float("nan") if key is None else votes[key] / n for key in group]
        return Judgements(torch.tensor(scores, dtype=torch.float)[:, None])

    def is_valid_score(self, score: float) -> bool:
        return 0 <= score <= 1
