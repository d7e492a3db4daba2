"""Did the judge change over the iterations, or did the answers it judges?

`judge_bacc` (examples/self_improvement.py) is the model's LLM judge measured on the model's CURRENT answers, so a fall
can mean the judge changed or the actor's answers moved. This script takes one seed of a finished runner folder and
judges the seed model's and the last iteration's sampled answers (the held-out judge prompts, as `judge_bacc`) with
both models' judges, and counts the judgements the two judges disagree on:

    python examples/judge_shift.py --run experiments/self_improvement/pair_sum-reasoned-judge --seed 4

The task and the flags that build it (--task, --reasoned-judge, --max-seq-len, the model's size) are read from the
folder's settings.json; a flag given here must agree with it. A folder written before settings.json recorded them
needs --task and --reasoned-judge or --no-reasoned-judge, as the run had them.

docs/results/pair-sum.md ("Why the judge's accuracy falls") reads its output.
"""

import argparse
from pathlib import Path

import torch

from self_rewarding_lm_pytorch.experiment.measure import balanced_accuracy, judge_scores_of, sampled_answers, says_right
from self_rewarding_lm_pytorch.experiment.settings import read_run
from self_rewarding_lm_pytorch.experiment.tasks import TASKS, build_task, recorded_task_flags
from self_rewarding_lm_pytorch.storage.checkpoint import load_checkpoint


def last_checkpoint(folder: Path) -> Path:
    checkpoints = sorted(folder.glob("stage-*.pt"))
    if not checkpoints:
        raise FileNotFoundError(f"no stage checkpoint in {folder}: is the run finished?")
    return checkpoints[-1]


def read_run_folder(parser: argparse.ArgumentParser, args) -> tuple:
    """The run folder's settings and its task, built from the flags its settings.json records (and the script's own
    --task, --reasoned-judge, --max-seq-len where it records none); a contradiction is a command-line error."""
    settings, record = read_run(args.run / "settings.json")
    given = {"task": args.task, "reasoned_judge": args.reasoned_judge, "max_seq_len": args.max_seq_len}
    try:
        return settings, build_task(**recorded_task_flags(record, given, str(args.run)))
    except ValueError as error:
        parser.error(str(error))


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a runner's out folder (holds settings.json)")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--arm", default="self_judge")
    parser.add_argument("--task", choices=sorted(TASKS), default=None, help="default: the run folder's")
    parser.add_argument("--reasoned-judge", action=argparse.BooleanOptionalAction, default=None,
                        help="default: the run folder's")
    parser.add_argument("--max-seq-len", type=int, default=None, help="default: the run folder's")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    # the run's own settings (its split, candidates and temperature) and task
    settings, task = read_run_folder(parser, args)
    seed_dir = args.run / f"seed-{args.seed}"
    iterations = sorted(seed_dir.glob(f"{args.arm}/iteration-*"), key=lambda p: int(p.name.split("-")[1]))
    if not iterations:
        raise FileNotFoundError(f"no {args.arm} iteration in {seed_dir}")
    models = {}
    for name, folder in (("seed model", seed_dir / "seed-model"), (f"{iterations[-1].name} model", iterations[-1])):
        models[name] = task.make_model(args.seed)
        load_checkpoint(models[name], last_checkpoint(folder))
        models[name].eval()

    judge_prompts = task.prompts(settings.num_judge_eval_prompts, settings.eval_split_seed + 1)
    for answerer_name, answerer in models.items():
        candidates = sampled_answers(answerer, task, settings, judge_prompts, args.seed)
        right = [task.checker(p, r) for p, r in zip(candidates.prompts, candidates.responses)]
        verdicts = {name: says_right(judge_scores_of(judge, task, candidates), task) for name, judge in models.items()}
        differ = sum(a != b for a, b in zip(*verdicts.values()))
        print(f"answers of the {answerer_name} ({sum(right)} of {len(right)} right); judges disagree on {differ}")
        for judge_name, says in verdicts.items():
            passed = [s for s, r in zip(says, right) if r]  # per right answer: did the judge pass it?
            caught = [not s for s, r in zip(says, right) if not r]  # per wrong answer: did the judge fail it?
            print(f"  judged by the {judge_name}: balanced accuracy {balanced_accuracy(says, right):.3f}, "
                  f"right answers passed {sum(passed) / max(len(passed), 1):.3f}, "
                  f"wrong answers caught {sum(caught) / max(len(caught), 1):.3f}")


if __name__ == "__main__":
    main()
