import json
import math
import os

import pytest
import torch
from torch import nn

from self_rewarding_lm_pytorch.training.early_stopping import EarlyStopper


class Scripted:
    """An eval_fn that returns the next score of a script and records what it saw."""

    def __init__(self, scores):
        self.scores = list(scores)
        self.calls = 0
        self.saw_training = []

    def __call__(self, model):
        self.saw_training.append(model.training)
        score = self.scores[self.calls]
        self.calls += 1
        return score


def run(stopper, model, num_calls, accelerator=None):
    """Call the stopper `num_calls` times, giving the weights a distinct value before each call; returns the
    decisions and the weights each call saw."""
    decisions, snapshots = [], []
    for call in range(num_calls):
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float(call))
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        decisions.append(stopper(model, accelerator))
    return decisions, snapshots


@pytest.mark.parametrize("mode, scores, best", [("min", [3.0, 1.0, 2.0, 4.0], 1), ("max", [1.0, 3.0, 2.0, 0.5], 1)])
def test_restores_the_weights_of_the_best_evaluation(mode, scores, best):
    model = nn.Linear(3, 2)
    stopper = EarlyStopper(Scripted(scores), mode=mode, patience=10)
    _, snapshots = run(stopper, model, len(scores))
    assert stopper.best_score == scores[best] and stopper.best_index == best

    stopper.restore_best(model)  # weights are now filled with 3.0; the best call saw 1.0
    for name, value in model.state_dict().items():
        assert torch.equal(value, snapshots[best][name]), name
    assert stopper.scores == scores


def test_patience_counts_evaluations_in_a_row_without_improvement():
    stopper = EarlyStopper(Scripted([3, 4, 2, 5, 6]), mode="min", patience=2)
    decisions, _ = run(stopper, nn.Linear(2, 2), 5)
    # 3 best; 4 bad (1); 2 best, counter reset; 5 bad (1); 6 bad (2) -> stop
    assert decisions == [False, False, False, False, True]
    assert stopper.num_bad_evals == 2 and stopper.best_score == 2


def test_min_delta_is_the_improvement_needed():
    stopper = EarlyStopper(Scripted([1.0, 0.7, 0.4]), mode="min", patience=3, min_delta=0.5)
    model = nn.Linear(2, 2)
    _, snapshots = run(stopper, model, 2)
    assert stopper.best_score == 1.0 and stopper.num_bad_evals == 1  # 0.7 is better, but not by more than 0.5
    _, _ = run(stopper, model, 1)  # 0.4 < 1.0 - 0.5: an improvement
    assert stopper.best_score == 0.4 and stopper.num_bad_evals == 0


def test_tensor_scores_nan_and_reset():
    stopper = EarlyStopper(Scripted([torch.tensor(0.5), torch.tensor(float("nan")), 2]), mode="max", patience=1)
    decisions, _ = run(stopper, nn.Linear(2, 2), 2)
    assert stopper.scores[0] == 0.5 and isinstance(stopper.scores[0], float)
    assert math.isnan(stopper.scores[1]) and decisions == [False, True]  # NaN never improves

    stopper.reset()
    assert stopper.scores == [] and stopper.best_score is None and stopper.num_bad_evals == 0
    with pytest.raises(RuntimeError, match="no evaluation yet"):
        stopper.restore_best(nn.Linear(2, 2))


def test_evaluates_in_eval_mode_and_restores_the_train_flag():
    eval_fn = Scripted([1, 2])
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    stopper = EarlyStopper(eval_fn)
    stopper(model)
    assert model.training and model[1].training
    model.eval()
    stopper(model)
    assert not model.training
    assert eval_fn.saw_training == [False, False]


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(mode="lowest"), ValueError, "'min' .* or 'max'"),
        (dict(patience=0), ValueError, "patience"),
        (dict(min_delta=-1.0), ValueError, "min_delta"),
    ],
)
def test_bad_settings_raise(kwargs, error, message):
    with pytest.raises(error, match=message):
        EarlyStopper(lambda model: 0.0, **kwargs)


def test_non_scalar_scores_raise():
    with pytest.raises(TypeError, match="scalar"):
        EarlyStopper(lambda model: torch.ones(2))(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="float, an int or a 0-d tensor"):
        EarlyStopper(lambda model: "0.5")(nn.Linear(2, 2))


# Two processes: each rank produces different raw scores, the stopper decides on their mean.
# rank 0 alone would stop at its 2nd call (1 -> 2) and rank 1 would not (3 -> 0); the means are 2, 1, 1.5.
RAW_SCORES = {0: [1.0, 2.0, 0.5], 1: [3.0, 0.0, 2.5]}


def two_process_run(folder):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)  # forked from a pytest process that may hold a single-process state
    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index
    model = nn.Linear(2, 2)
    stopper = EarlyStopper(Scripted(RAW_SCORES[rank]), mode="min", patience=1)
    decisions, _ = run(stopper, model, 3, accelerator)
    stopper.restore_best(model)
    result = dict(
        num_processes=accelerator.num_processes, decisions=decisions, scores=stopper.scores,
        restored=model.weight.flatten().tolist(),
    )
    with open(os.path.join(folder, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)


@pytest.mark.skipif(os.environ.get("SELF_REWARDING_SKIP_MULTIPROCESS") == "1", reason="multi-process tests disabled")
def test_every_process_takes_the_same_decision_on_the_mean_score(tmp_path):
    from accelerate import debug_launcher

    debug_launcher(two_process_run, args=(str(tmp_path),), num_processes=2)
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    for result in results:
        assert result["num_processes"] == 2
        assert result["scores"] == [2.0, 1.0, 1.5]
        assert result["decisions"] == [False, False, True]
        assert result["restored"] == [1.0] * 4  # the weights of the 2nd call, the best mean
