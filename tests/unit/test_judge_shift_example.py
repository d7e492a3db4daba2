"""examples/judge_shift.py on a runner folder it finds the checkpoints in (tiny settings, untrained model)."""

import sys
from pathlib import Path

EXAMPLES = Path(__file__).parents[2] / "examples"


def test_meta_judge_accuracy_counts_both_orders_and_the_first_position():
    sys.path.insert(0, str(EXAMPLES))
    from meta_judge_check import WRONG_KINDS, meta_judge_accuracy

    labelled = [("pair 3 7 1 8 5 2 = 12:", " 5 7", True), ("pair 3 7 1 8 5 2 = 12:", " 3 9", False),
                ("pair 3 7 1 8 5 2 = 12:", " 3 7", False), ("pair 3 7 1 8 5 2 = 12:", " 37", False)]

    def always_first(queries):
        return [0] * len(queries), []

    def knows(queries):  # names whichever judgement ends with the checker's score
        right = {" 5 7": "Score: 5", " 3 9": "Score: 0", " 3 7": "Score: 0"}
        return [0 if q.judgement_a.endswith(right[q.response]) else 1 for q in queries], []

    # score flipped: every answer that is a pair of digits (3); wrong look-up: only " 5 7" and " 3 9" have one
    assert meta_judge_accuracy(always_first, labelled, WRONG_KINDS["score flipped"]) == (3, 0.0, 1.0)
    assert meta_judge_accuracy(knows, labelled, WRONG_KINDS["score flipped"]) == (3, 1.0, 0.5)
    assert meta_judge_accuracy(knows, labelled, WRONG_KINDS["wrong look-up"]) == (2, 1.0, 0.5)
    assert meta_judge_accuracy(knows, labelled[3:], WRONG_KINDS["wrong look-up"]) is None
