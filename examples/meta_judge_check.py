"""Can the meta-judge tell a right judgement of an answer from a wrong one? (pair sum, `--reasoned-judge`)

    python examples/meta_judge_check.py --run DIR --seed S               # the seed model's meta-judge
    python examples/meta_judge_check.py --run DIR --seed S --arm meta_reward --iteration 3

DIR is a runner's out folder (examples/self_improvement.py --task pair_sum --reasoned-judge --max-seq-len 96
--arms meta_reward ...); the task and its flags are read from its settings.json (a folder written before they were
recorded: give --max-seq-len as the run had it, 96 by default). The model answers the run's held-out judge prompts
(as `judge_bacc` samples them); the checker labels each answer, and each answer's right judgement (its look-ups,
then the score) is paired with two kinds of wrong one, each shown in both orders to the meta-judge (greedy):
- score flipped: the right look-ups, the other score (what `meta_judge_examples` trains on by default);
- wrong look-up: one look-up wrong and the score that follows from it (`wrong_look_up`), the judge's real error.
Printed per kind: the pairs, the share where the meta-judge names the right judgement in both orders, and the share
of verdicts naming the first position (0.5 for a meta-judge without a favourite position).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from judge_shift import last_checkpoint, read_run_folder

from self_rewarding_lm_pytorch.experiment.measure import sampled_answers
from self_rewarding_lm_pytorch.experiment.settings import read_run
from self_rewarding_lm_pytorch.experiment.tasks import check_steps, wrong_look_up
from self_rewarding_lm_pytorch.judging.eft import two_point_targets
from self_rewarding_lm_pytorch.judging.meta_judge import MetaJudge, MetaQuery
from self_rewarding_lm_pytorch.storage.checkpoint import load_checkpoint


def score_flipped(prompt: str, response: str, label: bool) -> str:
    """The right look-ups, then the other score."""
    return check_steps(prompt, response) + two_point_targets()(not label)


WRONG_KINDS = {"score flipped": score_flipped, "wrong look-up": wrong_look_up}


def meta_judge_accuracy(meta_judge, labelled, wrong_of) -> tuple[int, float, float] | None:
    """Each labelled (prompt, answer, right?) whose answer is a pair of digits and that `wrong_of` gives a wrong
    judgement for, asked in both orders against its right judgement: (pairs, share with the right judgement named
    in both orders, share of verdicts naming the first position); None when there is no such answer."""
    pairs = []
    for p, r, label in labelled:
        steps, wrong = check_steps(p, r), wrong_of(p, r, label)
        if steps != "? " and wrong is not None:  # "? ": not a pair of digits, so no look-ups to check
            pairs.append((p, r, steps + two_point_targets()(label), wrong))
    if not pairs:
        return None
    queries = [MetaQuery(p, r, right, wrong) for p, r, right, wrong in pairs]
    queries += [MetaQuery(p, r, wrong, right) for p, r, right, wrong in pairs]
    verdicts, _ = meta_judge(queries)
    n = len(pairs)
    both = sum(first == 0 and second == 1 for first, second in zip(verdicts[:n], verdicts[n:])) / n
    return n, both, sum(v == 0 for v in verdicts) / len(verdicts)


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a runner's out folder (holds settings.json)")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--arm", default=None, help="an arm's iteration model (default: the seed model)")
    parser.add_argument("--iteration", type=int, default=None)
    parser.add_argument("--max-seq-len", type=int, default=None,
                        help="default: the run folder's (96 for a folder that does not record it)")
    args = parser.parse_args(argv)
    if (args.arm is None) != (args.iteration is None):
        parser.error("--arm and --iteration go together (neither: the seed model)")
    torch.set_num_threads(1)

    # only the pair-sum reasoned judge writes look-ups: a folder of another task or judge is an error
    args.task, args.reasoned_judge = "pair_sum", True
    recorded = read_run(args.run / "settings.json")[1]
    if args.max_seq_len is None and "max_seq_len" not in recorded:
        args.max_seq_len = 96
    settings, task = read_run_folder(parser, args)
    seed_dir = args.run / f"seed-{args.seed}"
    folder = seed_dir / "seed-model" if args.arm is None else seed_dir / args.arm / f"iteration-{args.iteration}"
    model = task.make_model(args.seed)
    load_checkpoint(model, last_checkpoint(folder))
    model.eval()

    candidates = sampled_answers(model, task, settings, task.prompts(settings.num_judge_eval_prompts,
                                                                      settings.eval_split_seed + 1), args.seed)
    labelled = [(p, r, task.checker(p, r)) for p, r in zip(candidates.prompts, candidates.responses)]
    meta_judge = MetaJudge(model, task.meta_judge_config, tokenizer_encode=task.encode, tokenizer_decode=task.decode,
                           max_new_tokens=task.meta_judge_max_new_tokens, temperature=0.0, pad_id=task.pad_id,
                           eos_id=task.eos_id, batch_size=64)
    for kind, wrong_of in WRONG_KINDS.items():
        asked = meta_judge_accuracy(meta_judge, labelled, wrong_of)
        if asked is None:
            print(f"{kind}: no pairs")
            continue
        n, both, names_first = asked
        print(f"{kind}: {n} pairs; the right judgement named in both orders {both:.3f}; first position named {names_first:.3f}")


if __name__ == "__main__":
    main()
