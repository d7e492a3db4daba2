"""Pure rules of Meta-Rewarding (Wu et al. 2024, arXiv 2407.19594, section 2): no model, no I/O.

- `judgement_meta_scores`: each judgement's score from the meta-judge's pairwise verdicts, both orders of every
  pair asked, wins weighted against the meta-judge's position bias (`meta_judge.position_weights`).
- `pick_judge_pair`: the highest vs the lowest meta-scored judgement of an answer, with the paper's filters.
- `length_controlled_pairs`: actor pairs where, among candidates scored near the top, the shortest is chosen.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from self_rewarding_lm_pytorch.meta_judge import A, B, position_weights
from self_rewarding_lm_pytorch.pair_selection import best_and_worst


def all_ordered_pairs(indices: list[int]) -> list[tuple[int, int]]:
    """Every pair of distinct judgements in both orders, (shown as A, shown as B): the paper asks both."""
    return [(a, b) for a in indices for b in indices if a != b]


def judgement_meta_scores(num_judgements: int, comparisons: list[tuple[int, int, int | None]]) -> Tensor:
    """(num_judgements,) meta-scores from `comparisons` (a, b, verdict): judgement a shown first, b second, the
    verdict 0 when A won, 1 when B won, None when unreadable (ignored).

    The paper's battle matrix B[m, n] adds w_first for each win of m over n from the first position and w_second
    for each win from the second; a judgement's meta-score is its weighted wins divided by the readable comparisons
    it took part in. (The paper fits Elo ratings to B; a judgement that wins all its comparisons, common with 3 or 4
    judgements, has an infinite Elo rating, while with both orders of every pair asked the ranking by wins is the
    ranking Elo gives.) NaN for a judgement in no readable comparison."""
    readable = [(a, b, v) for a, b, v in comparisons if v is not None]
    w_first, w_second = position_weights(sum(v == A for *_, v in readable), sum(v == B for *_, v in readable))
    wins = torch.zeros(num_judgements)
    games = torch.zeros(num_judgements)
    for a, b, verdict in readable:
        if verdict == A:
            wins[a] += w_first
        else:
            wins[b] += w_second
        games[a] += 1
        games[b] += 1
    return torch.where(games > 0, wins / games.clamp(min=1), torch.full_like(wins, math.nan))


def pick_judge_pair(meta_scores: Tensor, judgement_scores: Tensor, min_meta_margin: float | None = None
                    ) -> tuple[int, int] | str:
    """(chosen, rejected) judgement indices of an answer, or the reason there is no pair:
    - "meta_tied": fewer than two meta-scored judgements, or the highest and lowest meta-scores are equal;
    - "equal_scores": the two judgements give the answer the same score (the paper drops these: the pair would
      teach the judge nothing about scoring);
    - "meta_margin": the meta-scores differ by less than `min_meta_margin` (the meta-judge does not agree enough).
    The first highest / lowest index wins a tie within the top or bottom."""
    scored = ~meta_scores.isnan()
    if scored.sum() < 2:
        return "meta_tied"
    chosen = int(meta_scores.masked_fill(~scored, -math.inf).argmax())
    rejected = int(meta_scores.masked_fill(~scored, math.inf).argmin())
    margin = float(meta_scores[chosen] - meta_scores[rejected])
    if margin <= 0:
        return "meta_tied"
    if float(judgement_scores[chosen]) == float(judgement_scores[rejected]):
        return "equal_scores"
    if min_meta_margin is not None and margin < min_meta_margin - 1e-9:
        return "meta_margin"
    return chosen, rejected


def most_disputed_answer(judgement_scores: Tensor) -> int | None:
    """(n, K) valid judgement scores of a prompt's answers (NaN where none) -> the answer whose judgements disagree
    most (largest variance; the paper meta-judges the judgements of that answer), or None when every answer's
    judgements agree (any judge pair of it would give equal scores)."""
    counts = (~judgement_scores.isnan()).sum(-1)
    mean = judgement_scores.nanmean(-1, keepdim=True)
    variance = ((judgement_scores - mean) ** 2).nansum(-1) / counts.clamp(min=1)
    variance = variance.masked_fill(counts < 2, 0)
    best = int(variance.argmax())
    return best if variance[best] > 0 else None


def length_controlled_pairs(rewards: Tensor, lengths: Tensor, length_control: float | None) -> Tensor:
    """(b, n) mean scores (NaN: none) and (b, n) response lengths -> (b, 2) (chosen, rejected), -1 for no pair.

    `length_control` None: best vs worst (`best_and_worst`). A number rho in [0, 1): the paper's length control
    (section 2.1): the candidates scored in [S_max - rho (S_max - S_min), S_max] are of about the best quality, and the
    shortest of them is chosen; the rejected is the worst. rho = 0 still prefers the shortest of several best."""
    pairs = best_and_worst(rewards)
    if length_control is None:
        return pairs
    scored = ~rewards.isnan()
    high = rewards.masked_fill(~scored, -math.inf).amax(-1, keepdim=True)
    low = rewards.masked_fill(~scored, math.inf).amin(-1, keepdim=True)
    near_top = scored & (rewards >= high - length_control * (high - low) - 1e-6) & (rewards > low)
    shortest = lengths.float().masked_fill(~near_top, math.inf).argmin(-1)
    chosen = torch.where(pairs[:, 0] >= 0, shortest, pairs[:, 0])
    return torch.stack([chosen, pairs[:, 1]], dim=-1)
