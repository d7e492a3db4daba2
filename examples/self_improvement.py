"""Does a small model improve from its own judgements? Arms over the same seeds and prompts, on sorting digits
(`--task sort`, the default: the sort runs recorded in docs/results.md) or on pair sum (`--task pair_sum`: two of the
listed digits that sum to the target, a task where checking an answer is easier than finding one).

    python examples/self_improvement.py --task pair_sum --reasoned-judge --arms self_judge checker random
        # the headline of docs/results.md: pair sum, the model's own LLM judge (+5.6 +- 2.8 points over 2 iterations,
        # 5 test seeds, above random pairs in 5/5): all 5 seeds in one process, seed models trained from nothing
    python examples/self_improvement.py                      # sort, every default arm, 5 seeds
    python examples/self_improvement.py --quick              # a smoke run: one seed, few prompts (cannot show a gain)
    python examples/self_improvement.py --learning-rates 1e-5 3e-5   # a sweep: every arm at each learning rate
    python examples/self_improvement.py --split dev          # tune on the dev prompts; report on the default (test)

Time (one process runs the seeds one after another, on one thread): about 1.5 hours for either full run on a free
core, estimated from the recorded runs, each 5 processes (one per seed) sharing 2 cores: sort 40 min of wall time
(about 80 core-minutes, 4 arms), pair sum 33 min (about 66 core-minutes, seed models' first two stages cached; one
seed from nothing with 2 arms, the slow test, about 13 min). `--quick`: about 2 min of CPU time for sort (every
default arm) and 2.5 min for pair sum (--reasoned-judge --arms self_judge checker random), measured.

Each run writes to its own folder: --out, by default experiments/self_improvement/<task>[-reasoned-judge][-dev]
[-meta-judge][-quick] (a folder holding a run with other settings is refused: give another --out). A rerun with the
same settings resumes. Arms (see self_rewarding_lm_pytorch/experiment/arms.py): `self_judge` (LLM-as-a-judge trained
on its own answers), `self_judge_agree` (+ consistency filtering), `self_consistency` (ScPO votes), `checker` (upper
bound), `random` (control: random pairs of the same candidates), and on request `meta_reward` (Meta-Rewarding: the
judge's judgements are meta-judged and judge pairs train beside the actor's); `sft` is the model before any
preference stage. Writes settings.json (the task, every flag and the settings), runs.jsonl (every measurement),
results.md (mean and 95% interval over seeds) and results.png (needs the [plots] extra). The tasks and each task's
settings: self_rewarding_lm_pytorch/experiment/tasks.py.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from self_rewarding_lm_pytorch.experiment.arms import DEFAULT_ARMS, OPTIONAL_ARMS
from self_rewarding_lm_pytorch.experiment.report import pyplot, write_report
from self_rewarding_lm_pytorch.experiment.runner import ExperimentRunner
from self_rewarding_lm_pytorch.experiment.settings import ExperimentSettings, read_run, run_record, setting_value
from self_rewarding_lm_pytorch.experiment.tasks import (
    QUICK_NOTE,
    SPLIT_SEEDS,
    TASK_FLAGS,
    TASK_SETTINGS,
    TASK_TITLES,
    TASKS,
    build_task,
    quick_settings,
)

EXPERIMENTS = Path("experiments/self_improvement")


def default_out(args, arms) -> Path:
    """Each task, and each choice that changes the seed model (the judge's format, the split's held-out prompts, a
    meta-judge, --quick), writes to its own folder under experiments/self_improvement."""
    name = args.task + "-reasoned-judge" * args.reasoned_judge + (f"-{args.split}" if args.split != "test" else "")
    name += "-meta-judge" * any(arm.trains_meta_judge for arm in arms) + "-quick" * args.quick
    return EXPERIMENTS / name


def other_run_settings(out: Path, record: dict, settings: ExperimentSettings) -> list[str]:
    """How the run already in `out` (its settings.json) differs from this one: its task, task flags and settings
    (seeds aside: a run may add seeds); [] for a new folder."""
    if not (out / "settings.json").is_file():
        return []
    there_settings, there = read_run(out / "settings.json")
    there = json.loads(json.dumps({**{k: v for k, v in there.items() if k in ("task", *TASK_FLAGS)},
                                   **{k: v for k, v in run_record(there_settings)["settings"].items() if k != "seeds"}}))
    here = json.loads(json.dumps({**record, **run_record(settings)["settings"]}))
    return [f"{name}: {there[name]!r} there, {here[name]!r} here" for name in there if there[name] != here.get(name)]


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None,
                        help="the run folder (default: experiments/self_improvement/<task>[-reasoned-judge][-dev]"
                             "[-meta-judge][-quick])")
    parser.add_argument("--task", choices=sorted(TASKS), default="sort",
                        help="sort: sort 5 digits (the recorded sort runs); pair_sum: two listed digits summing to a "
                             "target (the headline, with --reasoned-judge)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: one seed, fewer prompts in every phase; it cannot show the gain")
    parser.add_argument("--seeds", type=int, nargs="+")
    parser.add_argument("--arms", nargs="+", choices=[arm.name for arm in DEFAULT_ARMS + OPTIONAL_ARMS],
                        help="default: every arm but meta_reward (which also teaches the shared seed model to meta-judge)")
    parser.add_argument("--learning-rates", type=float, nargs="+", help="DPO learning rates to sweep (each its own folder)")
    parser.add_argument("--split", choices=sorted(SPLIT_SEEDS), default="test")
    parser.add_argument("--set", nargs="+", default=[], metavar="NAME=VALUE",
                        help="override ExperimentSettings fields, e.g. --set temperature=0.5 num_candidates=16")
    parser.add_argument("--reasoned-judge", action="store_true",
                        help="EFT targets work out the sorted digits (sort) or look up and add the answer's digits (pair_sum) before the "
                             "score (default: the score alone)")
    parser.add_argument("--max-seq-len", type=int, default=64,
                        help="the model's context (rotary positions: no weights depend on it); 96 fits the meta-judge prompt "
                             "with two reasoned judgements (--reasoned-judge --arms meta_reward), 100 with "
                             "--judge-compares-target")
    parser.add_argument("--meta-wrong-look-ups", action="store_true",
                        help="pair_sum --reasoned-judge --arms meta_reward: the meta-judge also learns judgement pairs "
                             "whose wrong judgement has a wrong look-up (default: only a wrong score after the right ones)")
    parser.add_argument("--judge-compares-target", action="store_true",
                        help="pair_sum --reasoned-judge: the judge also writes the target and whether its sum is it "
                             "(\"t12y\") before the score")
    parser.add_argument("--dim", type=int, default=None, help="the model's width (default: the task's, 96)")
    parser.add_argument("--depth", type=int, default=None, help="the model's layers (default: the task's, 3)")
    parser.add_argument("--gpu", action="store_true",
                        help="train and measure on the GPU (default: the CPU, as the recorded runs); a GPU run is a new run, "
                             "not a replica of a CPU one")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; 1 is fastest for this tiny model, and the only sane choice on a shared CPU")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    try:
        pyplot()  # before the run, not after it: results.png needs matplotlib
    except ImportError as error:
        parser.error(str(error))
    task_settings = TASK_SETTINGS[args.task]
    settings = ExperimentSettings(**(quick_settings(task_settings) if args.quick else task_settings),
                                  eval_split_seed=SPLIT_SEEDS[args.split])
    for item in args.set:
        name, value = item.split("=", 1)
        if not hasattr(settings, name):
            parser.error(f"--set {item}: ExperimentSettings has no field {name!r}")
        current = getattr(settings, name)
        if isinstance(current, tuple):
            parser.error(f"--set {item}: {name} is a tuple; use --seeds for seeds")
        setattr(settings, name, setting_value(name, value))
    if args.seeds:
        settings.seeds = tuple(args.seeds)
    if args.meta_wrong_look_ups and not (args.task == "pair_sum" and args.reasoned_judge):
        parser.error("--meta-wrong-look-ups needs --task pair_sum --reasoned-judge: only its judge writes look-ups")
    arms = [arm for arm in DEFAULT_ARMS + OPTIONAL_ARMS if arm.name in args.arms] if args.arms else list(DEFAULT_ARMS)
    if args.judge_compares_target and not (args.task == "pair_sum" and args.reasoned_judge):
        parser.error("--judge-compares-target needs --task pair_sum --reasoned-judge")
    if args.gpu and not torch.cuda.is_available():
        parser.error("--gpu: torch sees no CUDA device here (torch.cuda.is_available() is False)")
    task_flags = {name: getattr(args, name) for name in TASK_FLAGS}
    task = build_task(args.task, **task_flags)
    out_root = args.out or default_out(args, arms)
    record = dict(task=args.task, **task_flags, flags=json.loads(json.dumps(vars(args), default=str)))
    note = QUICK_NOTE.format(eft=settings.num_eft_prompts, prompts=settings.prompts_per_iteration,
                             eval=settings.num_eval_prompts) if args.quick else ""
    if note:
        print(note)
    for lr in args.learning_rates or [settings.dpo_learning_rate]:
        out = out_root / f"lr-{lr:g}" if args.learning_rates else out_root
        settings.dpo_learning_rate = lr
        differences = other_run_settings(out, record, settings)
        if differences:
            parser.error(f"{out} holds a run with other settings ({'; '.join(differences)}): give another --out "
                         f"(each task and --quick has its own default folder), or delete {out}")
        runner = ExperimentRunner(task, settings, arms, out, accelerate_kwargs={} if args.gpu else dict(cpu=True),
                                  record=record)
        try:
            rows = runner.run()
        except ValueError as error:
            if "written by a different plan" not in str(error):
                raise
            raise SystemExit(f"{error}\n\nexamples/self_improvement.py: {out} holds files of another run; give "
                             f"another --out DIR (each task and --quick has its own default folder), or delete "
                             f"{out}") from error
        print(write_report(rows, out, title=f"{TASK_TITLES[args.task]}, DPO lr {lr:g}, {args.split} prompts"
                                            f"{', --quick' if args.quick else ''}", note=note))


if __name__ == "__main__":
    main()
