"""examples/hf_model.py end to end on the tiny model it builds (`--tiny`): its default settings make pairs."""

import ast
import os
import sys
from pathlib import Path

import pytest
from helpers import run_watched

pytest.importorskip("transformers", reason="the example needs the [hf] extra")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hf_model.py"


def test_the_hf_example_with_its_default_learning_rates_makes_every_pair(tmp_path):
    """The original defaults (SFT at 1e-5, then 1e-4) taught the judge format too slowly: no judgement parsed and
    the stage stopped with 0 pairs. Only the pair count is shrunk here; steps and learning rates are the defaults.
    About 20 s idle."""
    env = dict(os.environ, PYTHONPATH=str(EXAMPLE.parents[1]), OMP_NUM_THREADS="1")
    done = run_watched([sys.executable, str(EXAMPLE), "--tiny", "--pairs", "16"], cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    summaries = [ast.literal_eval(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [s["kind"] for s in summaries] == ["sft", "self-reward-dpo"]
    assert summaries[1]["pairs"] == 16 and summaries[1]["judge_parse_rate"] > 0.5
    assert (tmp_path / "checkpoints" / "hf" / "stage-01-self-reward-dpo.hf" / "config.json").is_file()


def test_the_hf_example_needs_a_checkpoint_or_tiny(tmp_path):
    """About 4 s idle."""
    done = run_watched([sys.executable, str(EXAMPLE)], cwd=tmp_path,
                       env=dict(os.environ, PYTHONPATH=str(EXAMPLE.parents[1])))
    assert done.returncode == 2 and "--tiny" in done.stderr
