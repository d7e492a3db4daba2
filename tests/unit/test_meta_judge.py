"""Meta-Rewarding's pure parts: the meta-judge prompt and verdict parser, position-swap aggregation of verdicts
into judgement scores, judge pairs, and length-controlled actor pairs, each on hand-made inputs."""

import math

import pytest
import torch

from self_rewarding_lm_pytorch.judging.meta_judge import MetaJudgeConfig, position_weights
from self_rewarding_lm_pytorch.pairs.meta_rules import (
    ELO_PRIOR,
    all_ordered_pairs,
    battle_matrix,
    elo_ratings,
    judgement_meta_scores,
    length_controlled_pairs,
    most_disputed_answer,
    pick_judge_pair,
)

NAN = math.nan


@pytest.mark.parametrize(
    "output, verdict",
    [
        ("Winner: A", 0),
        ("Winner: B", 1),
        ("Judgement A misses the error. Winner: Judgement B", 1),
        ("Winner: Judgment A", 0),  # American spelling
        ("Winner: [[A]]", 0),
        ("Winner: [Judgement B]", 1),
        ("Winner:B", 1),  # no space
        ("Winner:\n\n   A", 0),  # any whitespace
        ("Winner: A.", 0),
        # the format restated first, the real verdict last: the last match counts
        ('format: "Winner: [Judgement A | Judgement B]". Both are close, but Winner: Judgement B', 1),
        ("Winner: Alice", None),  # not a verdict: the A of a word
        ("Winner: AB", None),
        ("Winner: tie", None),
        ("winner: A", None),  # the template's text is literal, as in the score parser
        ("Winner: a", None),
        ("", None),
        ("A", None),
    ],
)
def test_verdict_parser(output, verdict):
    assert MetaJudgeConfig().parse(output) == verdict


def test_custom_templates_are_literal_and_validated():
    config = MetaJudgeConfig(prompt_template="m{{ prompt }}{{ response }}|{{ judgement_a }}|{{ judgement_b }}|",
                             verdict_regex_template="Better (of 2): {{ winner }}")
    assert config.parse("Better (of 2): B") == 1  # regex characters in the template are literal text
    assert config.parse("Better of 2: B") is None
    # values are inserted literally, in one pass: a placeholder inside a value is not expanded
    assert config.render("p", "{{ judgement_a }}", "Score: 5", "Score: 0") == "mp{{ judgement_a }}|Score: 5|Score: 0|"

    with pytest.raises(ValueError, match=r"missing: \['judgement_b'\]"):
        MetaJudgeConfig(prompt_template="{{ prompt }}{{ response }}{{ judgement_a }}")
    with pytest.raises(ValueError, match=r"unknown: \['score'\]"):
        MetaJudgeConfig(prompt_template="{{ prompt }}{{ response }}{{ judgement_a }}{{ judgement_b }}{{ score }}")
    with pytest.raises(ValueError, match="winner"):
        MetaJudgeConfig(verdict_regex_template="Winner: {{ reward }}")
    with pytest.raises(ValueError, match="not both"):
        MetaJudgeConfig(verdict_regex_template="W: {{ winner }}", parse_verdict=lambda text: 0)
    with pytest.raises(TypeError, match="0 \\(judgement A won\\)"):
        MetaJudgeConfig(parse_verdict=lambda text: "A").parse("A")
    assert MetaJudgeConfig(parse_verdict=lambda text: 1 if "second" in text else None).parse("the second") == 1


def test_position_weights():
    assert position_weights(3, 3) == (0.5, 0.5)
    assert position_weights(4, 2) == (2 / 6, 4 / 6)  # first position favoured: its wins count less
    assert position_weights(6, 0) == (0.0, 1.0)
    assert all(math.isnan(w) for w in position_weights(0, 0))


def verdicts(table: dict[tuple[int, int], int | None]) -> list[tuple[int, int, int | None]]:
    return [(a, b, table[(a, b)]) for a, b in all_ordered_pairs([0, 1, 2])]


def test_both_orders_of_every_pair_are_asked():
    assert all_ordered_pairs([0, 2, 3]) == [(0, 2), (0, 3), (2, 0), (2, 3), (3, 0), (3, 2)]


def test_battle_matrix_by_hand():
    # A is said except when judgement 0 is shown second (then B): 4 first-position wins (weight 2/6), 2 second (4/6)
    table = {(0, 1): 0, (1, 0): 1, (0, 2): 0, (2, 0): 1, (1, 2): 0, (2, 1): 0}
    expected = torch.tensor([[0, 1 / 3 + 2 / 3, 1 / 3 + 2 / 3], [0, 0, 1 / 3], [0, 1 / 3, 0]], dtype=torch.float64)
    torch.testing.assert_close(battle_matrix(3, verdicts(table)), expected)


def paper_objective(ratings: torch.Tensor, battles: torch.Tensor) -> torch.Tensor:
    gaps = ratings[:, None] - ratings[None, :]
    return (battles * torch.nn.functional.logsigmoid(gaps)).sum() - ELO_PRIOR / 2 * ratings.square().sum()


@pytest.mark.parametrize("seed", range(3))
def test_elo_ratings_maximise_the_papers_objective(seed):
    battles = torch.rand(4, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).fill_diagonal_(0)
    ratings = elo_ratings(battles).requires_grad_()
    (gradient,) = torch.autograd.grad(paper_objective(ratings, battles), ratings)
    assert gradient.abs().max() < 1e-6  # a stationary point of a concave objective: its maximum
    assert float(ratings.detach().sum()) == pytest.approx(0, abs=1e-6)


def test_elo_ratings_of_two_judgements_by_hand():
    # judgement 0 beat 1 with weight b: ratings +-d/2 where b * (1 - sigmoid(d)) = prior * d / 2
    ratings = elo_ratings(torch.tensor([[0, 0.75], [0, 0]], dtype=torch.float64))
    d = float(ratings[0] - ratings[1])
    assert float(ratings[0]) == pytest.approx(-float(ratings[1]))
    assert 0.75 * (1 - 1 / (1 + math.exp(-d))) == pytest.approx(ELO_PRIOR * d / 2, rel=1e-6)
    assert d > 0


def test_consistent_meta_judge_ranks_by_wins():
    # 0 > 1 > 2 in both orders: 3 wins from each position, weights 1/2
    scores = judgement_meta_scores(3, verdicts({(0, 1): 0, (1, 0): 1, (0, 2): 0, (2, 0): 1, (1, 2): 0, (2, 1): 1}))
    assert scores[0] > scores[1] > scores[2]
    assert float(scores[1]) == pytest.approx(0, abs=1e-6) and float(scores[0]) == pytest.approx(-float(scores[2]))
    assert pick_judge_pair(scores, torch.tensor([5.0, 0.0, 0.0])) == (0, 2)


def test_meta_judge_that_always_says_a_gives_no_pair():
    scores = judgement_meta_scores(3, verdicts({pair: 0 for pair in all_ordered_pairs([0, 1, 2])}))
    assert scores.tolist() == [0.0, 0.0, 0.0]  # 6 first-position wins, weight 0: no information
    assert pick_judge_pair(scores, torch.tensor([5.0, 0.0, 3.0])) == "meta_tied"


def test_meta_judge_that_splits_every_pair_gives_no_pair():
    # each pair gets the same letter in both orders (0-1: A, A; 0-2: A, A; 1-2: B, B): every pair is split one-one,
    # so no judgement is better. (Weighted wins per comparison ranked 1 and 2 above 0 here: 0's wins were all from
    # the favoured first position.)
    table = {(0, 1): 0, (1, 0): 0, (0, 2): 0, (2, 0): 0, (1, 2): 1, (2, 1): 1}
    scores = judgement_meta_scores(3, verdicts(table))
    assert scores.abs().max() < 1e-6
    assert pick_judge_pair(scores, torch.tensor([5.0, 0.0, 3.0])) == "meta_tied"


def test_position_biased_meta_judge_is_reweighted():
    # the table of test_battle_matrix_by_hand: 0 beats 1 and 2 in both orders, 1 and 2 split their pair
    table = {(0, 1): 0, (1, 0): 1, (0, 2): 0, (2, 0): 1, (1, 2): 0, (2, 1): 0}
    scores = judgement_meta_scores(3, verdicts(table))
    assert scores[0] > scores[1] and float(scores[1]) == pytest.approx(float(scores[2]))
    assert pick_judge_pair(scores, torch.tensor([5.0, 0.0, 0.0])) == (0, 1)  # the first of the tied lowest


def test_unreadable_verdicts_are_left_out():
    table = {(0, 1): 0, (1, 0): 1, (0, 2): None, (2, 0): None, (1, 2): None, (2, 1): None}
    scores = judgement_meta_scores(3, verdicts(table))
    # 0 beat 1 in both orders, weights 1/2: the two-judgement case with b = 1
    assert scores[:2].tolist() == pytest.approx(elo_ratings(torch.tensor([[0, 1.0], [0, 0]], dtype=torch.float64)).tolist())
    assert math.isnan(scores[2])
    assert all(math.isnan(s) for s in judgement_meta_scores(2, [(0, 1, None), (1, 0, None)]).tolist())


@pytest.mark.parametrize(
    "meta, scores, margin, expected",
    [
        ([0.5, 0.25, 0.0], [5, 0, 0], None, (0, 2)),
        ([0.5, 0.25, 0.0], [5, 0, 5], None, "equal_scores"),  # the paper's filter
        ([0.2, 0.2, NAN], [5, 0, 0], None, "meta_tied"),
        ([0.5, NAN, NAN], [5, 0, 0], None, "meta_tied"),
        ([0.5, 0.25, 0.3], [5, 0, 0], 0.3, "meta_margin"),  # the meta-judge does not agree enough
        ([0.5, 0.25, 0.3], [5, 0, 0], 0.25, (0, 1)),
        ([0.5, 0.5 + 1e-9, -0.5], [5, 0, 0], None, (0, 2)),  # fitted ratings this close are equal: the first wins
        ([1e-9, 0.0, -1e-9], [5, 0, 0], None, "meta_tied"),
    ],
)
def test_judge_pairs_from_meta_scores(meta, scores, margin, expected):
    assert pick_judge_pair(torch.tensor(meta), torch.tensor(scores, dtype=torch.float), margin) == expected


def test_most_disputed_answer():
    assert most_disputed_answer(torch.tensor([[5, 5, 5], [5, 0, 5], [0, 0, NAN]])) == 1
    assert most_disputed_answer(torch.tensor([[5, 5, 5], [0, 0, NAN]])) is None  # every answer's judgements agree
    assert most_disputed_answer(torch.tensor([[5, NAN, NAN], [3, 1, NAN]])) == 1


@pytest.mark.parametrize(
    "rewards, lengths, rho, expected",
    [
        ([4, 5, 4.8, 1], [3, 10, 5, 2], None, [1, 3]),  # off: best vs worst
        ([4, 5, 4.8, 1], [3, 10, 5, 2], 0.0, [1, 3]),  # only the best is near the top
        ([4, 5, 4.8, 1], [3, 10, 5, 2], 0.1, [2, 3]),  # near the top: >= 5 - 0.1 * 4 = 4.6; 4.8 is shorter
        ([4, 5, 4.8, 1], [3, 10, 5, 2], 0.5, [0, 3]),  # >= 3: the shortest of 4, 5, 4.8
        ([5, 5, 1], [9, 4, 2], 0.0, [1, 2]),  # two best: the shorter
        ([NAN, 3, 3, 1], [1, 9, 4, 1], 0.0, [2, 3]),  # unscored and worst candidates are never chosen
        ([2, 2, 2], [3, 1, 2], 0.5, [-1, -1]),  # all tied: no pair, as best vs worst
        ([2, 1], [5, 1], 0.99, [0, 1]),  # the worst is never its own chosen, however wide the tier
    ],
)
def test_length_control(rewards, lengths, rho, expected):
    pairs = length_controlled_pairs(torch.tensor([rewards], dtype=torch.float), torch.tensor([lengths]), rho)
    assert pairs.tolist() == [expected]
