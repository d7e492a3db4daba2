"""examples/self_improvement.py's run folders and what they record, with the runner's training and measurement
replaced by stand-ins (the stages themselves are tested elsewhere): each task and --quick write to their own default
folder, settings.json records the task, every flag and the settings, a folder holding another run is refused naming
--out, and examples/judge_shift.py reads the task back from the folder."""

import argparse
import json
from pathlib import Path

import pytest
from torch import nn

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def cli(tmp_path, monkeypatch):
    """The example's main() in tmp_path, its runner training nothing: each stage is recorded by its file label."""
    import self_rewarding_lm_pytorch.experiment.runner as experiment

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import self_improvement

    stages, failure = [], []

    class RecordingTrainer:
        def __init__(self, model, finetune_configs, **kwargs):
            stages.append([config.name for config in finetune_configs])

        def __call__(self):
            if failure:
                raise failure[0]
            return [dict(pairs=3)]

    monkeypatch.setattr(experiment, "SelfRewardingTrainer", RecordingTrainer)
    monkeypatch.setattr(experiment, "measure", lambda *args: dict(exact_match=0.5, judge_bacc=0.5))
    monkeypatch.setattr(experiment.ExperimentRunner, "seed_model",
                        lambda self, seed, seed_dir, held_out, phases=None: (nn.Linear(1, 1), [], []))
    self_improvement.stages, self_improvement.failure = stages, failure
    return self_improvement


def recorded(folder: Path) -> dict:
    return json.loads((folder / "settings.json").read_text())


def test_each_task_and_quick_write_to_their_own_folder_and_a_quick_run_after_a_default_run_works(cli, capsys):
    root = Path("experiments/self_improvement")
    cli.main(["--seeds", "0", "--arms", "random"])
    assert "smoke run" not in capsys.readouterr().out
    cli.main(["--quick", "--arms", "random"])
    out = capsys.readouterr().out
    assert out.startswith("A --quick run is a smoke run") and "cannot show the gain" in out
    cli.main(["--task", "pair_sum", "--reasoned-judge", "--quick", "--arms", "self_judge"])
    assert sorted(p.name for p in root.iterdir()) == ["pair_sum-reasoned-judge-quick", "sort", "sort-quick"]

    default, quick = recorded(root / "sort"), recorded(root / "sort-quick")
    assert default["task"] == "sort" and default["flags"]["quick"] is False and quick["flags"]["quick"] is True
    assert default["flags"]["arms"] == ["random"] and default["settings"]["prompts_per_iteration"] == 768
    assert quick["settings"]["prompts_per_iteration"] == 128 and quick["settings"]["seeds"] == [0]
    assert quick["settings"]["eft_mistake_prompts"] == 0  # a phase that is off stays off
    pair_sum = recorded(root / "pair_sum-reasoned-judge-quick")
    assert (pair_sum["task"], pair_sum["reasoned_judge"], pair_sum["max_seq_len"]) == ("pair_sum", True, 64)
    # --quick shrinks pair sum's judge-mistake round too (6,000 prompts in the full run)
    assert pair_sum["settings"]["eft_mistake_prompts"] == 200 and pair_sum["settings"]["num_eft_prompts"] == 200
    assert pair_sum["settings"]["num_instruction_examples"] == 1_500  # kept: fewer leave no model to improve

    assert "cannot show the gain" in (root / "sort-quick" / "results.md").read_text()
    assert "cannot show the gain" not in (root / "sort" / "results.md").read_text()
    # the preference stages' files are named after their arm
    assert [names[0] for names in cli.stages] == ["random-dpo"] * 4 + ["self-judge-dpo"] * 2


def test_a_folder_holding_another_run_is_refused_before_it_starts_naming_out(cli, capsys):
    cli.main(["--seeds", "0", "--arms", "random"])
    written = recorded(Path("experiments/self_improvement/sort"))
    with pytest.raises(SystemExit):
        cli.main(["--seeds", "0", "--arms", "random", "--set", "temperature=0.7"])
    error = capsys.readouterr().err
    assert "temperature: 0.4 there, 0.7 here" in error and "give another --out" in error
    assert recorded(Path("experiments/self_improvement/sort")) == written  # the folder's record is untouched
    cli.main(["--seeds", "1", "--arms", "random"])  # more seeds of the same run: not another run


def test_a_different_plan_error_from_the_trainer_keeps_its_message_and_names_out(cli):
    message = "stage-00-instructions.pt was written by a different plan: stage 0 changed (seed)"
    cli.failure.append(ValueError(message))
    with pytest.raises(SystemExit) as raised:
        cli.main(["--seeds", "0", "--arms", "random"])
    assert message in str(raised.value.code) and "give another --out DIR" in str(raised.value.code)


def test_judge_shift_reads_the_task_from_the_folder_and_refuses_a_flag_that_contradicts_it(cli, capsys):
    cli.main(["--task", "pair_sum", "--reasoned-judge", "--max-seq-len", "80", "--quick", "--arms", "self_judge"])
    import judge_shift

    folder = Path("experiments/self_improvement/pair_sum-reasoned-judge-quick")
    parser = argparse.ArgumentParser()
    settings, task = judge_shift.read_run_folder(parser, argparse.Namespace(
        run=folder, task=None, reasoned_judge=None, max_seq_len=None))
    assert task.max_seq_len == 80 and task.judge_rationale is not None  # the reasoned judge, at the run's length
    assert settings.prompts_per_iteration == 128 and settings.num_judge_eval_prompts == 48
    # a flag that agrees is fine; one that contradicts the folder is an error naming both values
    judge_shift.read_run_folder(parser, argparse.Namespace(run=folder, task="pair_sum", reasoned_judge=True,
                                                           max_seq_len=None))
    with pytest.raises(SystemExit):
        judge_shift.read_run_folder(parser, argparse.Namespace(run=folder, task=None, reasoned_judge=False,
                                                               max_seq_len=None))
    assert "--reasoned-judge False contradicts the run folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        judge_shift.main(["--run", str(folder), "--seed", "0", "--max-seq-len", "64"])
    assert "records max_seq_len=80" in capsys.readouterr().err


def test_judge_shift_on_a_folder_that_records_no_task_asks_for_it(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import judge_shift

    (tmp_path / "settings.json").write_text(json.dumps(dict(num_candidates=2)))  # written before tasks were recorded
    parser = argparse.ArgumentParser()
    with pytest.raises(SystemExit):
        judge_shift.read_run_folder(parser, argparse.Namespace(run=tmp_path, task="pair_sum", reasoned_judge=None,
                                                               max_seq_len=None))
    assert "give --task and --reasoned-judge or --no-reasoned-judge" in capsys.readouterr().err
    settings, task = judge_shift.read_run_folder(parser, argparse.Namespace(
        run=tmp_path, task="pair_sum", reasoned_judge=False, max_seq_len=None))
    assert settings.num_candidates == 2 and task.judge_rationale is None and task.max_seq_len == 64
