"""Pure rules of Meta-Rewarding (Wu et al. 2024, arXiv 2407.19594, section 2): no model, no I/O.

- `judgement_meta_scores`: each judgement's Elo rating from the meta-judge's pairwise verdicts, both orders of
  every pair asked, wins weighted against the meta-judge's position bias (`battle_matrix`, `elo_ratings`).
- `pick_judge_pair`: the highest vs the lowest meta-scored judgement of an answer, with the paper's filters.
- `length_controlled_pairs`: actor pairs where, among candidates scored near the top, the shortest is chosen.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from self_rewarding_lm_pytorch.judging.meta_judge import A, B, position_weights
from self_rewarding_lm_pytorch.pairs.selection import best_and_worst


def all_ordered_pairs(indices: list[int]) -> list[tuple[int, int]]:
    """Every pair of distinct judgements in both orders, (shown as A, shown as B): the paper asks both."""
    return [(a, b) for a in indices for b in indices if a != b]


# a weak Gaussian prior on the ratings (a ridge on the paper's objective): a judgement that wins every comparison,
# common with 3-4 judgements, would otherwise have an infinite rating; the order of the ratings is the data's
ELO_PRIOR = 0.01
RATING_TOLERANCE = 1e-6


def battle_matrix(num_judgements: int, comparisons: list[tuple[int, int, int | None]]) -> Tensor:
    """(K, K) battle matrix of the paper (Wu et al. 2024, section 2.2) from `comparisons` (a, b, verdict): judgement
    a shown first, b second, the verdict 0 when A won, 1 when B won, None when unreadable (no battle).
    B[m, n] = w_first * (m won over n from the first position) + w_second * (m won over n from the second), the
    position weights computed from the readable verdicts (`meta_judge.position_weights`)."""
    readable = [(a, b, v) for a, b, v in comparisons if v is not None]
    w_first, w_second = position_weights(sum(v == A for *_, v in readable), sum(v == B for *_, v in readable))
    battles = torch.zeros(num_judgements, num_judgements, dtype=torch.float64)
    for a, b, verdict in readable:
        if verdict == A:
            battles[a, b] += w_first
        else:
            battles[b, a] += w_second
    return battles


def elo_ratings(battles: Tensor, prior: float = ELO_PRIOR) -> Tensor:
    """(K,) ratings e maximising the paper's Elo objective sum_mn B[m, n] log sigmoid(e_m - e_n), minus
    prior / 2 * |e|^2 (see ELO_PRIOR). Concave, so L-BFGS finds its one maximum; in log-odds units."""
    ratings = torch.zeros(len(battles), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([ratings], max_iter=200, tolerance_grad=1e-10, tolerance_change=1e-14,
                                  line_search_fn="strong_wolfe")

    def negative_objective():
        optimizer.zero_grad()
        gaps = ratings[:, None] - ratings[None, :]
        loss = -(battles * F.logsigmoid(gaps)).sum() + prior / 2 * ratings.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(negative_objective)
    return ratings.detach()


def judgement_meta_scores(num_judgements: int, comparisons: list[tuple[int, int, int | None]]) -> Tensor:
    """(num_judgements,) meta-scores from `comparisons` (a, b, verdict), as `battle_matrix` reads them: the Elo
    ratings the paper fits to the battle matrix (`elo_ratings`). NaN for a judgement in no readable comparison.
    The position weights are those of this answer's verdicts."""
    played = torch.zeros(num_judgements, dtype=torch.bool)
    for a, b, verdict in comparisons:
        if verdict is not None:
            played[a] = played[b] = True
    ratings = elo_ratings(battle_matrix(num_judgements, comparisons)).float()
    return ratings.masked_fill(~played, math.nan)


def pick_judge_pair(meta_scores: Tensor, judgement_scores: Tensor, min_meta_margin: float | None = None
                    ) -> tuple[int, int] | str:
    """(chosen, rejected) judgement indices of an answer, or the reason there is no pair:
    - "meta_tied": fewer than two meta-scored judgements, or the highest and lowest meta-scores are equal;
    - "equal_scores": the two judgements give the answer the same score (the paper drops these: the pair would
      teach the judge nothing about scoring);
    - "meta_margin": the meta-scores differ by less than `min_meta_margin` (the meta-judge does not agree enough).
    Meta-scores within `RATING_TOLERANCE` of each other are equal (fitted ratings of equal judgements differ by
    rounding); the first highest / lowest index wins a tie within the top or bottom."""
    scored = ~meta_scores.isnan()
    if scored.sum() < 2:
        return "meta_tied"
    high = float(meta_scores.masked_fill(~scored, -math.inf).max())
    low = float(meta_scores.masked_fill(~scored, math.inf).min())
    margin = high - low
    if margin <= RATING_TOLERANCE:
        return "meta_tied"
    chosen = int((scored & (meta_scores >= high - RATING_TOLERANCE)).int().argmax())  # the first index at the top
    rejected = int((scored & (meta_scores <= low + RATING_TOLERANCE)).int().argmax())
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
