"""Does a small model improve from its own judgements? Arms over the same seeds and prompts, on sorting digits
(`--task sort`, the default and the recorded runs) or on pair sum (`--task pair_sum`: two of the listed digits that
sum to the target, a task where checking an answer is easier than finding one).

    python examples/self_improvement.py                      # the run recorded in docs/results.md (~30 min, 2 cores)
    python examples/self_improvement.py --quick              # a smoke run in a few minutes
    python examples/self_improvement.py --learning-rates 1e-5 3e-5   # a sweep: every arm at each learning rate
    python examples/self_improvement.py --split dev          # tune on the dev prompts; report on the default (test)
    python examples/self_improvement.py --task pair_sum --split dev   # the pair-sum task

Arms (see self_rewarding_lm_pytorch/experiment/arms.py): `self_judge` (LLM-as-a-judge trained on its own answers),
`self_judge_agree` (+ consistency filtering), `self_consistency` (ScPO votes), `checker` (upper bound), `random`
(control: random pairs of the same candidates), and on request `meta_reward` (Meta-Rewarding: the judge's
judgements are meta-judged and judge pairs train beside the actor's); `sft` is the model before any preference stage. Writes
runs.jsonl (every measurement), results.md (mean and 95% interval over seeds) and results.png to --out. The tasks
and each task's settings: self_rewarding_lm_pytorch/experiment/tasks.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from self_rewarding_lm_pytorch.experiment.arms import DEFAULT_ARMS, OPTIONAL_ARMS
from self_rewarding_lm_pytorch.experiment.report import write_report
from self_rewarding_lm_pytorch.experiment.runner import ExperimentRunner
from self_rewarding_lm_pytorch.experiment.settings import ExperimentSettings, setting_value
from self_rewarding_lm_pytorch.experiment.tasks import QUICK, SPLIT_SEEDS, TASK_SETTINGS, TASK_TITLES, TASKS


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("experiments/self_improvement"))
    parser.add_argument("--task", choices=sorted(TASKS), default="sort",
                        help="sort: sort 5 digits (the recorded runs); pair_sum: two listed digits summing to a target")
    parser.add_argument("--quick", action="store_true", help="one seed, fewer prompts: a smoke run")
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

    settings = ExperimentSettings(**{**TASK_SETTINGS[args.task], **(QUICK if args.quick else {})},
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
    task_options = dict(meta_wrong_look_ups=args.meta_wrong_look_ups, judge_compares_target=args.judge_compares_target
                        ) if args.task == "pair_sum" else {}
    task_options.update({name: getattr(args, name) for name in ("dim", "depth") if getattr(args, name) is not None})
    task = TASKS[args.task](reasoned_judge=args.reasoned_judge, max_seq_len=args.max_seq_len, **task_options)
    for lr in args.learning_rates or [settings.dpo_learning_rate]:
        out = args.out / f"lr-{lr:g}" if args.learning_rates else args.out
        settings.dpo_learning_rate = lr
        runner = ExperimentRunner(task, settings, arms, out, accelerate_kwargs={} if args.gpu else dict(cpu=True))
        rows = runner.run()
        print(write_report(rows, out, title=f"{TASK_TITLES[args.task]}, DPO lr {lr:g}, {args.split} prompts"))


if __name__ == "__main__":
    main()
