"""The experiment runner's arithmetic (balanced accuracy, intervals, per-seed checks) and, marked slow, the claim
itself: one seed of the bundled self-improvement experiment, where pairs from the model alone beat random pairs."""

import json
import math

import pytest

from self_rewarding_lm_pytorch.experiment import tasks
from self_rewarding_lm_pytorch.experiment.measure import balanced_accuracy
from self_rewarding_lm_pytorch.experiment.report import mean_and_interval, per_seed_checks, summary_table, write_report
from self_rewarding_lm_pytorch.experiment.settings import setting_value


def test_balanced_accuracy_by_hand():
    # 3 right answers (2 called right), 1 wrong answer (called wrong): (2/3 + 1) / 2
    assert balanced_accuracy([True, True, False, False], [True, True, True, False]) == pytest.approx(5 / 6)
    # a judge that calls everything right is at chance however skewed the answers are
    assert balanced_accuracy([True] * 10, [True] * 9 + [False]) == 0.5
    assert math.isnan(balanced_accuracy([True, False], [True, True]))  # no wrong answer: undefined


def test_mean_and_95_interval_over_seeds():
    mean, half = mean_and_interval([0.1, 0.2, 0.3])
    assert mean == pytest.approx(0.2)
    assert half == pytest.approx(4.303 * 0.1 / math.sqrt(3))  # t(0.975, 2 dof) * sd / sqrt(n)
    assert mean_and_interval([0.5])[0] == 0.5 and math.isnan(mean_and_interval([0.5])[1])
    assert mean_and_interval([math.nan, 0.4])[0] == 0.4


def rows():
    out = []
    for seed, (start, mine, rand) in enumerate([(0.40, 0.50, 0.38), (0.30, 0.33, 0.34)]):
        out.append(dict(seed=seed, arm="sft", iteration=0, exact_match=start))
        out.append(dict(seed=seed, arm="self_consistency", iteration=1, exact_match=mine, pairs=10))
        out.append(dict(seed=seed, arm="random", iteration=1, exact_match=rand, pairs=10))
    return out


def test_per_seed_checks_count_gains_and_wins_over_the_control():
    table = per_seed_checks(rows())
    line = next(line for line in table.splitlines() if line.startswith("| self_consistency"))
    assert "+10.0, +3.0" in line and "1/2" in line  # seed 1 loses to random (0.33 < 0.34)


def test_per_seed_checks_without_the_control_say_so_instead_of_counting_losses():
    without_random = [r for r in rows() if r["arm"] != "random"]
    line = next(line for line in per_seed_checks(without_random).splitlines() if line.startswith("| self_consistency"))
    assert line.endswith("| - |")
    # the control in one seed only: the arm is compared in that seed alone
    one_seed = [r for r in rows() if not (r["arm"] == "random" and r["seed"] == 1)]
    line = next(line for line in per_seed_checks(one_seed).splitlines() if line.startswith("| self_consistency"))
    assert line.endswith("| 1/1 |")


def test_report_files_and_the_plot_draws_clipped_bands_and_tells_coinciding_arms_apart(tmp_path, monkeypatch):
    """The plot path runs (matplotlib is in the [test] extra): results.png is written, and what reaches matplotlib
    has a marker per arm, arms with equal values at distinct x, and bands inside [0, 100]."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.axes import Axes

    drawn, bands = [], []
    original_plot, original_fill = Axes.plot, Axes.fill_between
    monkeypatch.setattr(Axes, "plot", lambda self, x, y, **kw: drawn.append((list(x), list(y), kw)) or
                        original_plot(self, x, y, **kw))
    monkeypatch.setattr(Axes, "fill_between", lambda self, x, low, high, **kw: bands.append((list(low), list(high)))
                        or original_fill(self, x, low, high, **kw))
    # two arms with the same values in both seeds (they coincide), and values near 100% whose interval passes 100
    near_top = [{"seed": s, "arm": a, "iteration": i, "exact_match": v} for s, v in ((0, 0.99), (1, 0.90))
                for a, i in (("sft", 0), ("checker", 1), ("self_judge", 1))]
    text = write_report(near_top, tmp_path, title="t", note="a note")
    assert (tmp_path / "results.png").stat().st_size > 1000
    assert (tmp_path / "results.csv").read_text().startswith("seed,arm,iteration")
    assert text.startswith("# t\n\na note\n\nMean") and "| checker | 1 | 2 |" in text
    assert [kw["label"] for _, _, kw in drawn] == ["checker", "self_judge"]
    assert drawn[0][1] == drawn[1][1]  # the same means ...
    assert all(a != b for a, b in zip(drawn[0][0], drawn[1][0]))  # ... at distinct x
    assert drawn[0][2]["marker"] != drawn[1][2]["marker"]
    assert all(0 <= low and high == 100.0 for lows, highs in bands for low, high in zip(lows, highs))  # 94.5 ± 57
    assert summary_table(near_top).count("| 2 |") == 3


def test_the_missing_plot_dependency_names_the_install_from_a_checkout(monkeypatch):
    import builtins

    from self_rewarding_lm_pytorch.experiment import report

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(ImportError, match=r'pip install -e "\.\[plots\]"'):
        report.pyplot()


def test_meta_reward_arm_rows_and_its_task_requirement(tmp_path):
    from dataclasses import replace

    from self_rewarding_lm_pytorch.experiment.arms import OPTIONAL_ARMS
    from self_rewarding_lm_pytorch.experiment.runner import ExperimentRunner, pair_numbers
    from self_rewarding_lm_pytorch.experiment.settings import ExperimentSettings

    summary = dict(pairs=12, actor_pairs=10, judge_pairs=2, meta_parse_rate=1.0, meta_first_position_rate=0.5,
                   pairs_chosen_verified_better=0.5, pairs_chosen_verified_worse=0.2,
                   judge_pairs_chosen_verified_better=1.0, **{"judge_pairs_dropped/meta_tied": 7})
    row = pair_numbers(summary)
    # `pairs` and its checker shares are the actor's, as in every other arm; the judge pairs are counted apart
    assert row["pairs"] == 10 and row["judge_pairs"] == 2 and row["pairs_neither"] == pytest.approx(0.3)
    assert row["judge_pairs_better"] == 1.0 and row["judge_pairs_worse"] == 0.0 and row["judge_pairs_dropped/meta_tied"] == 7

    task = tasks.sort_digits_task()
    assert ExperimentRunner(task, arms=OPTIONAL_ARMS, out_dir=tmp_path).trains_meta_judge
    # the settings reach the stage: a sampled meta-judge when asked for (`--set meta_judge_temperature=0.7`)
    settings = ExperimentSettings(meta_judge_temperature=0.7, length_control=0.2)
    stage = OPTIONAL_ARMS[0].stage(task.prompts(4, 0), task, settings)
    assert (stage.meta_judge_temperature, stage.length_control) == (0.7, 0.2)
    assert stage.num_judge_pairs == settings.num_preference_pairs  # unset: as many judge pairs as actor pairs
    # `--set meta_num_judge_pairs=768` gives the stage an int cap (a float one would break slicing hours later)
    judge_pairs = setting_value("meta_num_judge_pairs", "768")
    assert type(judge_pairs) is int and type(setting_value("judge_temperature", "1")) is float
    assert setting_value("meta_balance_wrong_judgements", "False") is False  # not bool("False")
    with pytest.raises(ValueError, match="true or false"):
        setting_value("meta_balance_wrong_judgements", "0")
    stage = OPTIONAL_ARMS[0].stage(task.prompts(4, 0), task, ExperimentSettings(meta_num_judge_pairs=judge_pairs))
    assert stage.num_judge_pairs == 768
    # the judgements' temperature is the candidates' unless `judge_temperature` is set, and then it is every LLM-judge
    # arm's (the control without meta-judging judges as hot), while the candidates keep theirs
    from self_rewarding_lm_pytorch.experiment.arms import DEFAULT_ARMS

    judge_arms = [arm for arm in DEFAULT_ARMS + OPTIONAL_ARMS if arm.name in ("self_judge", "self_judge_agree", "meta_reward")]
    for temperatures, expected in (({}, 0.4), (dict(judge_temperature=1.0), 1.0)):
        settings = ExperimentSettings(temperature=0.4, **temperatures)
        stages = [arm.stage(task.prompts(4, 0), task, settings) for arm in judge_arms]
        assert [(s.judge_temperature, s.temperature) for s in stages] == [(expected, 0.4)] * 3
    with pytest.raises(ValueError, match="meta_judge_config"):
        ExperimentRunner(replace(task, meta_judge_config=None), arms=OPTIONAL_ARMS, out_dir=tmp_path)


@pytest.mark.parametrize("reasoned_judge", [False, True])
def test_pair_sum_task_in_the_example_fits_its_model_and_builds_every_arm(reasoned_judge):
    from self_rewarding_lm_pytorch.experiment.arms import DEFAULT_ARMS
    from self_rewarding_lm_pytorch.experiment.settings import ExperimentSettings

    task = tasks.pair_sum_task(reasoned_judge=reasoned_judge)
    prompts = task.prompts(50, 0)
    assert prompts == task.prompts(50, 0) and prompts != task.prompts(50, 1)
    for seq, prompt_len in task.instruction_examples(20, 0):
        assert task.checker(task.decode(seq[:prompt_len]), task.decode(seq[prompt_len:]))
    # the longest judge prompt (a 2-digit target, an answer as long as max_new_tokens) and its judgement fit the model
    longest = max(prompts, key=len)
    judge_prompt = task.reward_config.render(longest, "9" * task.max_new_tokens)
    assert len(task.encode(judge_prompt)) + task.judge_max_new_tokens <= task.max_seq_len
    if reasoned_judge:  # the judge looks up and adds the answer's digits, then scores, within its token budget
        judgement = tasks.check_steps("pair 3 7 1 8 5 2 = 12:", " 5 7") + "Score: 5"
        assert judgement == "5y 7y 5+7=12 Score: 5" and len(judgement) + 1 <= task.judge_max_new_tokens
        assert tasks.check_steps("pair 3 7 1 8 5 2 = 12:", " 4 8") == "4n 8y 4+8=12 "
        assert tasks.check_steps("pair 3 7 1 8 5 2 = 10:", " 5 5") == "5y 5n 5+5=10 "  # 5 is listed once
        assert tasks.check_steps("pair 5 1 5 = 10:", " 5 5") == "5y 5y 5+5=10 "
        assert tasks.check_steps("pair 5 1 5 = 10:", " 5 5 1") == "? "
    settings = ExperimentSettings(**tasks.TASK_SETTINGS["pair_sum"])
    assert (settings.num_instruction_examples, settings.num_eft_prompts, settings.eft_epochs) == (1_500, 6_000, 4)
    assert (settings.eft_instruction_replay_share, settings.dpo_learning_rate) == (0.25, 3e-5)
    assert settings.eft_mistake_prompts == 6_000 and ExperimentSettings().eft_mistake_prompts == 0  # sort: off
    assert ExperimentSettings().num_instruction_examples == 700  # sort's defaults: the recorded runs, unchanged
    for arm in DEFAULT_ARMS:
        assert arm.stage(prompts, task, settings).prompt_dataset == prompts


def test_judge_refresh_replays_a_share_of_the_seed_judge_examples_after_each_iteration(tmp_path):
    import torch

    from self_rewarding_lm_pytorch.experiment.runner import ExperimentRunner, judge_refresh
    from self_rewarding_lm_pytorch.experiment.settings import ExperimentSettings

    examples = [(torch.tensor([1, 2, 3, 4]), 2) for _ in range(8)]
    assert judge_refresh(examples, ExperimentSettings()) == []  # off by default: the paper's plan
    (stage,) = judge_refresh(examples, ExperimentSettings(judge_refresh_share=0.25, dpo_learning_rate=3e-5))
    assert len(stage.train_dataset) == 2 and stage.num_epochs == 1 and stage.learning_rate == 3e-5
    # the meta-judge's seed examples, by their own share, in the same stage
    meta = [(torch.tensor([5, 6, 7]), 1) for _ in range(4)]
    assert judge_refresh(examples, ExperimentSettings(judge_refresh_share=0.25), meta) == judge_refresh(examples, ExperimentSettings(judge_refresh_share=0.25))
    (stage,) = judge_refresh(examples, ExperimentSettings(judge_refresh_share=0.25, meta_judge_refresh_share=0.5), meta)
    assert stage.train_dataset == examples[:2] + meta[:2]
    (stage,) = judge_refresh(examples, ExperimentSettings(meta_judge_refresh_share=1.0), meta)
    assert stage.train_dataset == meta

    for name in ("judge_refresh_share", "meta_judge_refresh_share"):
        with pytest.raises(ValueError, match=name):
            ExperimentRunner(tasks.sort_digits_task(), ExperimentSettings(**{name: 1.5}), out_dir=tmp_path)


def test_meta_judge_repeats_put_the_meta_judge_examples_that_many_times_in_the_judge_epoch(tmp_path, monkeypatch):
    """`meta_judge_repeats`: a meta-judge trained more than the judge it judges, in the same stage (alone, the meta
    examples erase the judge's format)."""
    from dataclasses import replace

    from self_rewarding_lm_pytorch.experiment import runner as experiment
    from self_rewarding_lm_pytorch.experiment.arms import OPTIONAL_ARMS
    from self_rewarding_lm_pytorch.experiment.settings import ExperimentSettings

    task = replace(tasks.sort_digits_task(dim=16, depth=1),  # both labels occur: a checker by the answer's characters
                   checker=lambda prompt, response: sum(map(ord, response)) % 2 == 0)
    stage_sizes = {}

    class RecordingTrainer:
        def __init__(self, model, finetune_configs, **kwargs):
            self.configs = finetune_configs

        def __call__(self):
            stage_sizes[repeats] = [len(config.train_dataset) for config in self.configs]

    monkeypatch.setattr(experiment, "SelfRewardingTrainer", RecordingTrainer)
    settings = ExperimentSettings(seeds=(0,), num_instruction_examples=16, sft_epochs=1, num_eft_prompts=8,
                                             eft_samples_per_prompt=2, eft_temperatures=(1.0,))
    for repeats in (1, 3):
        runner = experiment.ExperimentRunner(task, replace(settings, meta_judge_repeats=repeats), OPTIONAL_ARMS,
                                             tmp_path / str(repeats), show_progress=False)
        (tmp_path / str(repeats) / "seed-0").mkdir(parents=True)  # the trainer that is replaced here would make it
        runner.seed_model(0, tmp_path / str(repeats) / "seed-0", held_out=set())
    meta_examples = json.loads((tmp_path / "1" / "seed-0" / "eft.json").read_text())["meta_judge_examples"]
    assert meta_examples > 0
    assert stage_sizes[1][0] == stage_sizes[3][0] == 16  # the instruction stage is the same
    assert stage_sizes[3][1] - stage_sizes[1][1] == 2 * meta_examples  # the judge stage: 2 more copies of the meta examples
    with pytest.raises(ValueError, match="meta_judge_repeats"):
        experiment.ExperimentRunner(task, replace(settings, meta_judge_repeats=0), OPTIONAL_ARMS, tmp_path)


def test_pair_sum_wrong_look_ups_flip_either_look_up_that_decides_the_score():
    """`--meta-wrong-look-ups`: the meta-judge's extra wrong judgements are the judge's real error, a wrong look-up."""
    # a right answer: one of its digits called unlisted, so "Score: 0"; which one is fixed by a checksum of the text
    # (crc32, the same in every process, unlike hash()), and both positions occur
    assert tasks.wrong_look_up("pair 3 7 1 8 5 2 = 12:", " 5 7", True) == "5n 7y 5+7=12 Score: 0"
    assert tasks.wrong_look_up("pair 3 7 1 8 5 2 = 9:", " 8 1", True) == "8y 1n 8+1=9 Score: 0"
    # a wrong answer with the right sum and an unlisted digit (9): called listed, so "Score: 5", the blind spot
    assert tasks.wrong_look_up("pair 3 7 1 8 5 2 = 12:", " 3 9", False) == "3y 9y 3+9=12 Score: 5"
    # a wrong sum: no look-up error changes the score; malformed: no look-ups at all
    assert tasks.wrong_look_up("pair 3 7 1 8 5 2 = 12:", " 3 7", False) is None
    assert tasks.wrong_look_up("pair 3 7 1 8 5 2 = 12:", " 37", False) is None
    assert tasks.pair_sum_task(reasoned_judge=True, meta_wrong_look_ups=True).meta_wrong_judgement is tasks.wrong_look_up
    # `--judge-compares-target`: the judge also writes the target and whether the sum is it; the wrong look-ups keep it
    assert tasks.check_steps("pair 3 7 1 8 5 2 = 12:", " 5 7", compare_target=True) == "5y 7y 5+7=12 t12y "
    assert tasks.check_steps("pair 9 2 3 6 4 8 = 6:", " 1 3", compare_target=True) == "1n 3y 1+3=4 t6n "
    assert tasks.wrong_look_up("pair 3 7 1 8 5 2 = 12:", " 5 7", True, compare_target=True) == "5n 7y 5+7=12 t12y Score: 0"
    assert tasks.wrong_look_up("pair 3 7 1 8 5 2 = 12:", " 3 9", False, compare_target=True) == "3y 9y 3+9=12 t12y Score: 5"
    assert tasks.wrong_look_up("pair 3 7 1 8 5 2 = 12:", " 3 7", False, compare_target=True) is None
    with pytest.raises(ValueError, match="judge_compares_target"):
        tasks.pair_sum_task(judge_compares_target=True)
    task = tasks.pair_sum_task(reasoned_judge=True, meta_wrong_look_ups=True, judge_compares_target=True, max_seq_len=100)
    judgement = tasks.check_steps("pair 3 7 1 8 5 2 = 12:", " 5 7", compare_target=True) + "Score: 5"
    assert len(judgement) + 1 <= task.judge_max_new_tokens  # with its EOS
    # the stage's own check: the longest prompt, an answer and two judgements at their budgets, and the verdict
    meta_prompt = task.meta_judge_config.render(max(task.prompts(200, 0), key=len), "", "", "")
    budget = task.max_new_tokens + 2 * task.judge_max_new_tokens + task.meta_judge_max_new_tokens
    assert len(task.encode(meta_prompt)) + budget <= task.max_seq_len
    assert tasks.pair_sum_task(reasoned_judge=True).meta_wrong_judgement is None  # the recorded meta runs
    with pytest.raises(ValueError, match="only the reasoned judge writes look-ups"):
        tasks.pair_sum_task(meta_wrong_look_ups=True)


def test_read_settings_reads_a_run_folders_settings_and_refuses_a_setting_it_cannot_reproduce(tmp_path):
    """`read_settings` (judge_shift.py, meta_judge_check.py): a settings.json as the runner writes it; a field that
    ExperimentSettings does not have is read only at the value that leaves the run as the settings describe it."""
    from dataclasses import asdict

    from self_rewarding_lm_pytorch.experiment.settings import ExperimentSettings, read_settings

    path = tmp_path / "settings.json"
    path.write_text(json.dumps(asdict(ExperimentSettings(num_candidates=2, judge_temperature=0.7))))
    settings = read_settings(path)
    assert (settings.num_candidates, settings.judge_temperature) == (2, 0.7)
    path.write_text(json.dumps(dict(num_candidates=2, meta_dissent_judgements=0, meta_dissent_temperature=None)))
    assert read_settings(path).num_candidates == 2
    path.write_text(json.dumps(dict(meta_dissent_judgements=4)))
    with pytest.raises(ValueError, match="meta_dissent_judgements is not an ExperimentSettings field"):
        read_settings(path)


def test_the_bars_count_the_seeds_the_seed_models_phases_and_the_arms_iterations_and_stages_are_named(tmp_path,
                                                                                                         monkeypatch):
    """The experiment's bars, each over units of one kind (so no ETA divides an iteration's time by a seed model's):
    seeds; per seed, the seed model's phases (its stages, the labelling between them, its measurement); per seed, the
    arms' iterations. Each bar's total is what it then counts. The stages' files are named after what they train.
    The trainer, the labelling and the measurement are stand-ins."""
    import torch
    from torch import nn

    import self_rewarding_lm_pytorch.experiment.runner as experiment
    from self_rewarding_lm_pytorch.experiment.arms import DEFAULT_ARMS
    from self_rewarding_lm_pytorch.experiment.settings import ExperimentSettings

    bars, plans = [], []

    class Bar:
        def __init__(self, total=None, desc="", **kwargs):
            self.total, self.desc, self.n = total, desc, 0
            bars.append(self)

        def update(self, n=1):
            self.n += n

        def set_postfix(self, **kwargs):
            pass

        def close(self):
            pass

    class RecordingTrainer:
        def __init__(self, model, finetune_configs, **kwargs):
            plans.append([config.name for config in finetune_configs])

        def __call__(self):
            return [dict(pairs=3)]

    monkeypatch.setattr(experiment, "tqdm", Bar)
    monkeypatch.setattr(experiment, "SelfRewardingTrainer", RecordingTrainer)
    monkeypatch.setattr(experiment, "measure", lambda *args: dict(exact_match=0.5, judge_bacc=0.5))
    monkeypatch.setattr(experiment, "own_answer_judge_examples", lambda *args, **kwargs: type(
        "JudgeSet", (), {"examples": [(torch.tensor([1, 2, 3]), 1)] * 4, "labelled": [], "target_counts": {},
                         "label_counts_before_balancing": {}, "answers_sampled": 0, "distinct_answers": 0})())
    monkeypatch.setattr(experiment.ExperimentRunner, "judge_mistake_examples", lambda self, *args: [("mistake", 1)])
    task = tasks.sort_digits_task()
    task.make_model = lambda seed: nn.Linear(1, 1)
    arms = [arm for arm in DEFAULT_ARMS if arm.name in ("self_judge", "random")]
    settings = ExperimentSettings(seeds=(0, 1), prompts_per_iteration=4, iterations=3, eft_mistake_prompts=5,
                                  judge_refresh_share=1.0)
    for seed in settings.seeds:
        (tmp_path / f"seed-{seed}").mkdir()  # the trainer that is replaced here would make it
    experiment.ExperimentRunner(task, settings, arms, tmp_path).run()

    assert [(bar.desc, bar.total, bar.n) for bar in bars] == [
        ("experiment: seeds", 2, 2),
        ("seed 0: seed model", 6, 6), ("seed 0: arms", 6, 6),  # 5 phases and the measurement; 2 arms x 3 iterations
        ("seed 1: seed model", 6, 6), ("seed 1: arms", 6, 6),
    ]
    seed_plans = [["instructions"], ["instructions", "judge-training"],
                  ["instructions", "judge-training", "judge-mistakes"]]
    arm_plans = [["self-judge-dpo", "judge-refresh"]] * 3 + [["random-dpo", "judge-refresh"]] * 3
    assert plans == (seed_plans + arm_plans) * 2
    without_round = experiment.ExperimentRunner(task, ExperimentSettings(eft_mistake_prompts=0), arms, tmp_path)
    assert without_round.seed_phases() == ["instructions", "judge examples", "judge-training"]
