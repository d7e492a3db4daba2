"""The experiment runner's arithmetic (balanced accuracy, intervals, per-seed checks) and, marked slow, the claim
itself: one seed of the bundled self-improvement experiment, where pairs from the model alone beat random pairs."""

import json
from pathlib import Path

import pytest

from self_rewarding_lm_pytorch.experiment import tasks


@pytest.mark.slow
def test_self_consistency_beats_random_pairs_on_one_seed(tmp_path):
    """One seed of the recorded experiment, two arms: ScPO pairs from the model alone must gain over the seed model
    and end above random pairs of the same candidates. Not timed idle; a slow test (several minutes)."""
    from self_rewarding_lm_pytorch.experiment.arms import DEFAULT_ARMS
    from self_rewarding_lm_pytorch.experiment.runner import ExperimentRunner
    from self_rewarding_lm_pytorch.experiment.settings import ExperimentSettings

    arms = [arm for arm in DEFAULT_ARMS if arm.name in ("self_consistency", "random")]
    rows = ExperimentRunner(tasks.sort_digits_task(), ExperimentSettings(seeds=(0,)), arms, tmp_path,
                            show_progress=False).run()
    em = {(r["arm"], r["iteration"]): r["exact_match"] for r in rows}
    assert em[("self_consistency", 2)] > em[("random", 2)]
    assert em[("self_consistency", 2)] > em[("sft", 0)]


@pytest.mark.slow
def test_the_models_own_llm_judge_beats_random_pairs_on_pair_sum(tmp_path):
    """The namesake recipe on one dev seed (about 13 minutes on one core, the seed model built from scratch): pair sum,
    the judge trained on the model's own answers, writing its look-ups first (`--reasoned-judge`), and once more on
    its mistakes; the model judges its own candidates, and its pairs must gain over the seed model and end above
    random pairs of the same candidates."""
    from self_rewarding_lm_pytorch.experiment.arms import DEFAULT_ARMS
    from self_rewarding_lm_pytorch.experiment.runner import ExperimentRunner
    from self_rewarding_lm_pytorch.experiment.settings import ExperimentSettings

    arms = [arm for arm in DEFAULT_ARMS if arm.name in ("self_judge", "random")]
    settings = ExperimentSettings(**tasks.TASK_SETTINGS["pair_sum"], seeds=(1,), eval_split_seed=tasks.SPLIT_SEEDS["dev"])
    rows = ExperimentRunner(tasks.pair_sum_task(reasoned_judge=True), settings, arms, tmp_path, show_progress=False).run()
    em = {(r["arm"], r["iteration"]): r["exact_match"] for r in rows}
    judge_bacc = {(r["arm"], r["iteration"]): r["judge_bacc"] for r in rows}
    assert judge_bacc[("sft", 0)] >= 0.75  # a judge of its own answers worth training on
    assert em[("self_judge", 2)] > em[("random", 2)]
    assert em[("self_judge", 2)] > em[("sft", 0)]


def test_the_runner_puts_the_judge_refresh_after_every_arms_preference_stage(tmp_path, monkeypatch):
    """Wiring only (the stages themselves are tested elsewhere): each iteration's plan is the arm's stage, then the
    refresh, in every arm; the seed model, the trainer and the measurement are stand-ins. Under 1 s idle."""
    import torch
    from torch import nn

    import self_rewarding_lm_pytorch.experiment.runner as experiment
    from self_rewarding_lm_pytorch import SFTConfig
    from self_rewarding_lm_pytorch.experiment.arms import DEFAULT_ARMS
    from self_rewarding_lm_pytorch.experiment.settings import ExperimentSettings

    judge_examples = [(torch.tensor([1, 2, 3]), 1)] * 8
    plans = []

    class RecordingTrainer:
        def __init__(self, model, finetune_configs, **kwargs):
            plans.append([type(config).__name__ for config in finetune_configs])
            self.refresh = finetune_configs[1:]

        def __call__(self):
            assert all(isinstance(c, SFTConfig) and len(c.train_dataset) == 4 for c in self.refresh)
            return [dict(pairs=3)]

    monkeypatch.setattr(experiment, "SelfRewardingTrainer", RecordingTrainer)
    monkeypatch.setattr(experiment, "measure", lambda *args: dict(exact_match=0.5, judge_bacc=0.5))
    monkeypatch.setattr(experiment.ExperimentRunner, "seed_model", lambda self, *args: (nn.Linear(1, 1), judge_examples, []))
    arms = [arm for arm in DEFAULT_ARMS if arm.name in ("self_judge", "random")]
    settings = ExperimentSettings(seeds=(0,), prompts_per_iteration=4, judge_refresh_share=0.5)
    experiment.ExperimentRunner(tasks.sort_digits_task(), settings, arms, tmp_path, show_progress=False).run()
    assert plans == [["SelfRewardDPOConfig", "SFTConfig"]] * 2 + [["ExternalRewardDPOConfig", "SFTConfig"]] * 2


def test_every_trainer_of_the_run_gets_the_runners_accelerate_kwargs(tmp_path, monkeypatch):
    """The CPU by default (the recorded runs); `accelerate_kwargs={}` (the example's --gpu) reaches the seed model's
    trainers and every iteration's, not just the first. Under 1 s idle."""
    import self_rewarding_lm_pytorch.experiment.runner as experiment
    from self_rewarding_lm_pytorch.experiment.arms import DEFAULT_ARMS
    from self_rewarding_lm_pytorch.experiment.settings import ExperimentSettings

    seen = []

    class RecordingTrainer:
        def __init__(self, model, finetune_configs, **kwargs):
            seen.append(kwargs["accelerate_kwargs"])

        def __call__(self):
            return [dict(pairs=3)]

    monkeypatch.setattr(experiment, "SelfRewardingTrainer", RecordingTrainer)
    monkeypatch.setattr(experiment, "measure", lambda *args: dict(exact_match=0.5, judge_bacc=0.5))
    monkeypatch.setattr(experiment, "own_answer_judge_examples", lambda *args, **kwargs: type(
        "JudgeSet", (), dict(examples=[], labelled=[], target_counts={}, label_counts_before_balancing={},
                             answers_sampled=0, distinct_answers=0))())
    arms = [arm for arm in DEFAULT_ARMS if arm.name == "random"]
    settings = ExperimentSettings(seeds=(0,), prompts_per_iteration=4, iterations=2)
    assert experiment.ExperimentRunner(tasks.sort_digits_task(), settings, arms, tmp_path).accelerate_kwargs == dict(cpu=True)
    (tmp_path / "seed-0").mkdir()  # the trainer that is replaced here would make it
    experiment.ExperimentRunner(tasks.sort_digits_task(), settings, arms, tmp_path, show_progress=False,
                                accelerate_kwargs={}).run()
    assert seen == [{}] * 4  # the seed model's two plans, then the two iterations


def test_the_example_cli_passes_model_size_device_and_int_settings_to_the_runner(tmp_path, monkeypatch):
    """`--dim/--depth` size the task's model, `--gpu` is refused where torch sees no GPU (no silent CPU run), and
    `--set` gives `int | None` settings ints. Under 1 s idle."""
    import torch

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "examples"))
    import self_improvement as example

    runs = []

    class RecordingRunner:
        def __init__(self, task, settings, arms, out, accelerate_kwargs, record):
            runs.append((task, settings, accelerate_kwargs))

        def run(self):
            return []

    monkeypatch.setattr(example, "ExperimentRunner", RecordingRunner)
    monkeypatch.setattr(example, "write_report", lambda *args, **kwargs: "")
    argv = ["--task", "pair_sum", "--dim", "32", "--depth", "1", "--out", str(tmp_path), "--set", "meta_num_judge_pairs=5"]
    example.main(argv)
    task, settings, accelerate_kwargs = runs[0]
    model = task.make_model(0)
    assert model.attn_layers.layers[0][1].to_q.in_features == 32 and len(model.attn_layers.layers) == 2  # attn + ff
    assert settings.meta_num_judge_pairs == 5 and accelerate_kwargs == dict(cpu=True)
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            example.main([*argv, "--gpu"])


def test_the_judge_mistake_round_trains_a_third_seed_stage_on_the_judges_mistakes_and_resumes(tmp_path):
    """`eft_mistake_prompts`: after judge training, the seed judge judges fresh checker-labelled answers and one more
    SFT stage trains on its mistakes. A barely trained judge parses no score, so every answer is a mistake; a second
    call resumes the finished plan instead of training again. About 1 s idle."""
    from dataclasses import replace

    import torch

    from self_rewarding_lm_pytorch.experiment.runner import ExperimentRunner
    from self_rewarding_lm_pytorch.experiment.settings import ExperimentSettings
    from self_rewarding_lm_pytorch.storage.checkpoint import load_checkpoint

    # a tiny model, and a checker that splits its answers (by their characters) so that both judge labels occur
    task = replace(tasks.sort_digits_task(dim=16, depth=1),
                   checker=lambda prompt, response: sum(map(ord, response)) % 2 == 0)
    settings = ExperimentSettings(seeds=(0,), num_instruction_examples=16, sft_epochs=1, num_eft_prompts=8,
                                  eft_samples_per_prompt=2, eft_temperatures=(1.0,), eft_mistake_prompts=6,
                                  eft_mistake_temperatures=(1.0,), eft_mistake_epochs=1)
    with pytest.raises(ValueError, match="eft_judged_right_per_mistake must be >= 0"):
        ExperimentRunner(task, replace(settings, eft_judged_right_per_mistake=-1), out_dir=tmp_path)
    runner = ExperimentRunner(task, settings, out_dir=tmp_path, show_progress=False)
    model, *_ = runner.seed_model(0, tmp_path / "seed-0", held_out=set())

    counts = json.loads((tmp_path / "seed-0" / "eft_mistakes.json").read_text())
    assert counts["answers"] > 0 and counts["mistakes"] == counts["answers"]
    checkpoints = sorted((tmp_path / "seed-0" / "seed-model").glob("stage-*.pt"))
    assert [c.name for c in checkpoints] == ["stage-00-instructions.pt", "stage-01-judge-training.pt",
                                             "stage-02-judge-mistakes.pt"]
    judge_trained = task.make_model(0)
    load_checkpoint(judge_trained, checkpoints[1])
    final = model.state_dict()
    assert any(not torch.equal(v, final[k]) for k, v in judge_trained.state_dict().items())  # the round trained

    last_written = checkpoints[2].stat().st_mtime_ns
    again, *_ = runner.seed_model(0, tmp_path / "seed-0", held_out=set())
    assert checkpoints[2].stat().st_mtime_ns == last_written  # resumed, not retrained
    assert all(torch.equal(v, final[k]) for k, v in again.state_dict().items())
