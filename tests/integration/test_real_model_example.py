"""examples/real_model.py at its small size: the paper's plan on SmolLM2-135M-Instruct with LoRA runs every stage and
reports, per stage, held-out accuracy, the judge's parse rate and the pairs with how the checker ranks them.

    python -m pytest -m "slow and real_model" tests/integration/test_real_model_example.py
"""

import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers", reason="the real model is an HF model (the [hf] extra)")
pytest.importorskip("peft", reason="the example trains LoRA adapters (the [peft] extra)")
pytest.importorskip("datasets", reason="the example's seed data are datasets (the [datasets] extra)")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
import real_model_loading

pytestmark = [pytest.mark.slow, pytest.mark.real_model]


def test_the_example_runs_sft_and_two_self_rewarding_iterations(tmp_path, capsys):
    """Slow: 1,063 s at load 6-12; not timed idle."""
    reason = real_model_loading.missing()
    if reason is not None:
        pytest.skip(reason)
    import real_model

    summaries = real_model.main(["--small", "--folder", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "'stage': 'base model'" in printed and "evaluation after stage 0" in printed
    assert [s["kind"] for s in summaries][:1] == ["sft"]
    for summary in summaries:
        assert 0 <= summary["heldout_accuracy"] <= 1 and 0 <= summary["judge_heldout_parse_rate"] <= 1
    for summary in summaries[1:]:
        assert 0 <= summary["judge_parse_rate"] <= 1 and summary["pairs"] >= 0
        if summary["pairs"]:
            better = summary.get("pairs_chosen_verified_better", 0.0)
            worse = summary.get("pairs_chosen_verified_worse", 0.0)
            assert better + worse <= 1 + 1e-9 and not math.isnan(better)
    # every stage ran, or the example said why it stopped
    assert len(summaries) == 3 or "stopped in stage" in printed
