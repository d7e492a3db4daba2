"""examples/judge_shift.py on a runner folder it finds the checkpoints in (tiny settings, untrained model)."""

import json
import subprocess
import sys
from pathlib import Path

from accelerate import Accelerator
from helpers import run_watched

EXAMPLES = Path(__file__).parents[2] / "examples"


def run_script(run: Path, seed: int) -> subprocess.CompletedProcess:
    return run_watched([sys.executable, str(EXAMPLES / "judge_shift.py"), "--run", str(run), "--seed", str(seed)])


def test_judge_shift_reads_a_run_folder_and_finds_no_disagreement_between_identical_judges(tmp_path):
    """About 15 s idle."""
    from self_rewarding_lm_pytorch.experiment.settings import ExperimentSettings, run_record
    from self_rewarding_lm_pytorch.experiment.tasks import TASKS
    from self_rewarding_lm_pytorch.storage.checkpoint import save_checkpoint

    # as the example writes it: the settings, and the task and its flags (judge_shift needs no task flags)
    settings = ExperimentSettings(num_candidates=2, num_judge_eval_prompts=3, eval_split_seed=7)
    record = dict(task="pair_sum", reasoned_judge=False)
    (tmp_path / "settings.json").write_text(json.dumps(run_record(settings, record)))
    model, accelerator = TASKS["pair_sum"]().make_model(0), Accelerator(cpu=True)
    # no iteration yet: a clear error, not a comparison of the seed model with itself
    save_checkpoint(accelerator, model, tmp_path / "seed-0" / "seed-model" / "stage-01-sft.pt")
    missing = run_script(tmp_path, 0)
    assert missing.returncode != 0 and "no self_judge iteration" in missing.stderr

    for iteration in (1, 2):  # the last iteration is the one compared (same weights here: no judgement may differ)
        save_checkpoint(accelerator, model, tmp_path / "seed-0" / "self_judge" / f"iteration-{iteration}" / "stage-00-self-reward-dpo.pt")
    result = run_script(tmp_path, 0)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(";")[1].strip() for line in lines if line.startswith("answers of")] == ["judges disagree on 0"] * 2
    assert "answers of the iteration-2 model (" in result.stdout and "of 6 right" in result.stdout


def test_meta_judge_check_reads_a_run_folder_and_asks_both_kinds_of_pair_in_both_orders(tmp_path):
    """About 15 s idle."""
    from self_rewarding_lm_pytorch.experiment.settings import ExperimentSettings, run_record
    from self_rewarding_lm_pytorch.experiment.tasks import TASKS
    from self_rewarding_lm_pytorch.storage.checkpoint import save_checkpoint

    settings = ExperimentSettings(num_candidates=2, num_judge_eval_prompts=3, eval_split_seed=7)
    record = dict(task="pair_sum", reasoned_judge=True, max_seq_len=96)
    (tmp_path / "settings.json").write_text(json.dumps(run_record(settings, record)))
    model = TASKS["pair_sum"](reasoned_judge=True, max_seq_len=96).make_model(0)
    save_checkpoint(Accelerator(cpu=True), model, tmp_path / "seed-0" / "seed-model" / "stage-01-sft.pt")
    script = str(EXAMPLES / "meta_judge_check.py")
    result = run_watched([sys.executable, script, "--run", str(tmp_path), "--seed", "0"])
    assert result.returncode == 0, result.stderr
    lines = {line.split(":")[0]: line for line in result.stdout.splitlines()}
    assert set(lines) == {"score flipped", "wrong look-up"}
    # 6 answers of an untrained model: every one gets a score-flipped pair unless it is not a pair of digits
    assert "pairs; the right judgement named in both orders" in lines["score flipped"] or "no pairs" in lines["score flipped"]
    alone = run_watched([sys.executable, script, "--run", str(tmp_path), "--seed", "0", "--arm", "meta_reward"])
    assert alone.returncode != 0 and "--arm and --iteration go together" in alone.stderr
