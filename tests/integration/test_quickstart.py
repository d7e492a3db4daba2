"""The main job, as a user runs it: `python examples/quickstart.py` (about 80 s of one core; minutes when loaded)."""

import re
import sys
from pathlib import Path

import torch
from helpers import run_watched

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart.py"
STAGES = ["stage-00-sft", "stage-01-spin", "stage-02-self-consistency-dpo", "stage-03-external-reward-dpo"]


def test_quickstart_runs_every_stage_and_each_changes_the_model(tmp_path):
    """About 80 s idle."""
    run = run_watched([sys.executable, str(QUICKSTART)], cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    for stage in STAGES:
        assert stage in run.stdout  # one table row per stage, with its checkpoint

    weights = [torch.load(tmp_path / "checkpoints" / "quickstart" / f"{s}.pt", weights_only=True) for s in STAGES]
    for before, after, stage in zip(weights, weights[1:], STAGES[1:]):
        assert any(not torch.equal(before["model"][k], after["model"][k]) for k in before["model"]), stage
    # SFT taught the task: held-out exact-match accuracy is far above the untrained model's 0
    assert weights[0]["summary"]["accuracy"] > 0.3
    assert all(w["summary"]["judge_format"] > 0.9 for w in weights)
    assert_readme_shows(run.stdout)


def readme_block() -> str:
    readme = (ROOT / "README.md").read_text()
    return re.search(r"<!-- quickstart-output -->\n```\n(.*?)\n```\n<!-- /quickstart-output -->", readme, re.S)[1]


def number(word: str) -> float | None:
    try:
        return float(word.rstrip(";,%"))
    except ValueError:
        return None


def assert_readme_shows(stdout: str):
    """The README's quickstart block is what the script prints (it was once a hand-made table with other figures):
    the same words, and the same numbers up to 2% (a CPU with other kernels may round a last digit differently).
    The elapsed time is left out. On a failure, run `python scripts/regenerate_readme_quickstart.py`."""
    printed = stdout[stdout.index("before training"):]
    ours, theirs = [[line.split() for line in text.splitlines() if not line.startswith("done in")]
                    for text in (printed, readme_block())]
    fix = "run `python scripts/regenerate_readme_quickstart.py` to rewrite the README's block from a real run"
    assert [len(line) for line in ours] == [len(line) for line in theirs], f"README quickstart block: other lines; {fix}"
    for line, readme_line in zip(ours, theirs):
        for word, readme_word in zip(line, readme_line):
            a, b = number(word), number(readme_word)
            same = word == readme_word if a is None or b is None else abs(a - b) <= 0.02 * max(1.0, abs(a))
            assert same, (f"README quickstart block shows {readme_word!r} where the script prints {word!r}: "
                          f"{' '.join(line)}; {fix}")
