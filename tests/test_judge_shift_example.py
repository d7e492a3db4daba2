"""examples/judge_shift.py on a runner folder it finds the checkpoints in (tiny settings, untrained model)."""

import json
import subprocess
import sys
from pathlib import Path

from accelerate import Accelerator

EXAMPLES = Path(__file__).parent.parent / "examples"


def run_script(run: Path, seed: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(EXAMPLES / "judge_shift.py"), "--run", str(run), "--seed", str(seed)],
                          capture_output=True, text=True, timeout=300)


def test_judge_shift_reads_a_run_folder_and_finds_no_disagreement_between_identical_judges(tmp_path):
    sys.path.insert(0, str(EXAMPLES))
    from self_improvement import TASKS

    from self_rewarding_lm_pytorch import save_checkpoint
    from self_rewarding_lm_pytorch.experiment import ExperimentSettings

    (tmp_path / "settings.json").write_text(json.dumps(dict(num_candidates=2, num_judge_eval_prompts=3, eval_split_seed=7)))
    model, accelerator = TASKS["pair_sum"]().make_model(0), Accelerator(cpu=True)
    assert ExperimentSettings(**json.loads((tmp_path / "settings.json").read_text())).num_candidates == 2
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
