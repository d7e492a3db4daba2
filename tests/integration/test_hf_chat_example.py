"""examples/hf_chat_model.py end to end (minutes on CPU: marked slow, run with `pytest -m slow`)."""

import os
import sys
from pathlib import Path

import pytest
from helpers import run_watched

pytest.importorskip("peft", reason="the example needs the [peft] extra")
pytest.importorskip("datasets", reason="the example needs the [datasets] extra")
pytest.importorskip("tensorboard", reason="the example needs the [tensorboard] extra")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hf_chat_model.py"


@pytest.mark.slow
def test_the_chat_model_example_runs_the_paper_plan_and_exports_a_merged_model(tmp_path):
    """Slow; not timed idle."""
    env = dict(os.environ, PYTHONPATH=str(EXAMPLE.parents[1]))
    done = run_watched([sys.executable, str(EXAMPLE)], cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "'kind': 'self-reward-dpo'" in done.stdout
    assert (tmp_path / "checkpoints" / "hf_chat" / "merged" / "config.json").is_file()
    assert list((tmp_path / "checkpoints" / "hf_chat" / "logs").rglob("events.out.tfevents.*"))
