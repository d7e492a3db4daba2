"""The main job, as a user runs it: `python examples/quickstart.py` (about 25 s on 2 cores)."""

import subprocess
import sys
from pathlib import Path

import torch

QUICKSTART = Path(__file__).resolve().parent.parent / "examples" / "quickstart.py"
STAGES = ["stage-00-sft", "stage-01-spin", "stage-02-self-consistency-dpo", "stage-03-external-reward-dpo"]


def test_quickstart_runs_every_stage_and_each_changes_the_model(tmp_path):
    run = subprocess.run([sys.executable, str(QUICKSTART)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    for stage in STAGES:
        assert stage in run.stdout  # one table row per stage, with its checkpoint

    weights = [torch.load(tmp_path / "checkpoints" / "quickstart" / f"{s}.pt", weights_only=True) for s in STAGES]
    for before, after, stage in zip(weights, weights[1:], STAGES[1:]):
        assert any(not torch.equal(before["model"][k], after["model"][k]) for k in before["model"]), stage
    # SFT taught the task: held-out exact-match accuracy is far above the untrained model's 0
    assert weights[0]["summary"]["accuracy"] > 0.3
    assert all(w["summary"]["judge_format"] > 0.9 for w in weights)
