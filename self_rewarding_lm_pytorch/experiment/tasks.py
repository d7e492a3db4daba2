"""The experiment's two tasks as `ExperimentTask`s, and the settings each runs with.

- `sort_digits_task`: sort 5 digits (tasks/sort_digits.py), the default task.
- `pair_sum_task`: two of the listed digits that sum to the target (tasks/pair_sum.py), a task where checking an
  answer is easier than finding one.

`TASKS` maps the command line's `--task` to its builder, `TASK_SETTINGS` to its departures from the
`ExperimentSettings` defaults, and `SPLIT_SEEDS` maps `--split` to the seed of its held-out prompts.
"""

from __future__ import annotations

import zlib
from functools import partial

from x_transformers import Decoder, TransformerWrapper

from self_rewarding_lm_pytorch import MetaJudgeConfig, RewardConfig
from self_rewarding_lm_pytorch.experiment.settings import ExperimentSettings, ExperimentTask
from self_rewarding_lm_pytorch.judging.eft import two_point_targets
from self_rewarding_lm_pytorch.tasks import pair_sum
from self_rewarding_lm_pytorch.tasks.sort_digits import (
    CharTokenizer,
    SortDigitsTask,
    answer_key,
    is_correct,
    parse_prompt,
    solve,
)

SPLIT_SEEDS = dict(test=10_000, dev=20_000)  # the held-out prompts: `test` to report on, `dev` to tune on



def judge_prompt() -> RewardConfig:
    """Both tasks' judge prompt, short: the paper's 1.8k-character prompt does not fit a 64-token model; the judge
    scores on a two-point scale (0 or 5)."""
    return RewardConfig(prompt_template="judge {{ prompt }}{{ response }}|",
                        reward_regex_template="Score: {{ reward }}", score_range=(0, 5))


def meta_judge_prompt() -> MetaJudgeConfig:
    """As short: the meta-judge sees the prompt, the answer and two judgements, and answers "Winner: A" or "B"."""
    return MetaJudgeConfig(prompt_template="m{{ prompt }}{{ response }}|{{ judgement_a }}|{{ judgement_b }}|")


def reference_first(prompt: str, response: str) -> str:
    """What the sort judge writes before its score: the sorted digits worked out, then compared (a reference-guided
    judgement: the seed labeller knows the answer, so the EFT targets teach the judge to work it out first)."""
    return f"{solve(parse_prompt(prompt))} "


def rotary_model_maker(num_tokens: int, dim: int, depth: int, max_seq_len: int):
    """Both tasks' model: a decoder with rotary positions (no weights depend on max_seq_len), fresh for each seed."""

    def make_model(seed: int):
        return TransformerWrapper(num_tokens=num_tokens, max_seq_len=max_seq_len, use_abs_pos_emb=False,
                                  attn_layers=Decoder(dim=dim, depth=depth, heads=4, rotary_pos_emb=True))

    return make_model


def sort_digits_task(length: int = 5, dim: int = 96, depth: int = 3, max_seq_len: int = 64,
                     reasoned_judge: bool = False) -> ExperimentTask:
    """Sort digits (`tasks/sort_digits.py`): "sort 3 1 2:" -> " 1 2 3". `reasoned_judge`: the judge works out the
    sorted digits before its score (`reference_first`)."""
    tokenizer = CharTokenizer()

    return ExperimentTask(
        make_model=rotary_model_maker(tokenizer.num_tokens, dim, depth, max_seq_len),
        encode=tokenizer.encode, decode=tokenizer.decode,
        instruction_examples=lambda n, seed: SortDigitsTask(length, seed).instruction_examples(n),
        prompts=lambda n, seed: SortDigitsTask(length, seed).prompts(n),
        checker=is_correct, answer_key=answer_key,
        reward_config=judge_prompt(),
        max_seq_len=max_seq_len, max_new_tokens=2 * length + 2, eos_id=tokenizer.eos_id,
        judge_rationale=reference_first if reasoned_judge else None,
        judge_max_new_tokens=2 * length + 12 if reasoned_judge else 10,
        meta_judge_config=meta_judge_prompt(),
        meta_judge_max_new_tokens=10,
    )


def check_steps(prompt: str, response: str, compare_target: bool = False) -> str:
    """What the pair-sum judge writes before its score: each digit of the answer looked up in the list ("y" listed,
    "n" not; a listed digit used once), then their sum, e.g. "5y 7n 5+7=12 " (the checker's steps, written out: a
    reasoned judgement needs no reference answer here). `compare_target`: then the target and whether the sum is
    it, e.g. "t12y " (`--judge-compares-target`), so that a sum that is not the target is not scored as right."""
    pair = pair_sum.parse_response(response)
    if pair is None:
        return "? "
    available = list(pair_sum.parse_prompt(prompt)[0])
    looked_up = []
    for digit in pair:
        looked_up.append(f"{digit}{'y' if digit in available else 'n'}")
        if digit in available:
            available.remove(digit)
    steps = f"{looked_up[0]} {looked_up[1]} {pair[0]}+{pair[1]}={sum(pair)} "
    if compare_target:
        target = pair_sum.parse_prompt(prompt)[1]
        steps += f"t{target}{'y' if sum(pair) == target else 'n'} "
    return steps


def wrong_look_up(prompt: str, response: str, label: bool, compare_target: bool = False) -> str | None:
    """A pair-sum judgement with one wrong look-up and the score that follows from it, the error the judge really
    makes (meta-judge training, `meta_judge_examples(wrong_judgement=...)`): one of a right answer's digits called
    unlisted, or a wrong answer's unlisted digit called listed when its sum is right. None where no look-up error
    changes the score (a wrong sum). Which of a right answer's digits is fixed by a checksum of the text, so that
    both positions occur (a meta-judge must check both look-ups) and a rerun gives the same examples."""
    pair = pair_sum.parse_response(response)
    if pair is None:
        return None
    first, second, *rest = check_steps(prompt, response, compare_target).split()  # rest: the sum (and the target)
    look_ups = [first, second]
    if label:
        wrong = zlib.crc32(f"{prompt}{response}".encode()) % 2
        look_ups[wrong] = f"{look_ups[wrong][0]}n"
        return " ".join([*look_ups, *rest, two_point_targets()(False)])
    if any(look_up[1] == "n" for look_up in look_ups) and sum(pair) == pair_sum.parse_prompt(prompt)[1]:
        return " ".join([*(look_up[0] + "y" for look_up in look_ups), *rest, two_point_targets()(True)])
    return None


def pair_sum_task(length: int = 6, dim: int = 96, depth: int = 3, max_seq_len: int = 64,
                  reasoned_judge: bool = False, meta_wrong_look_ups: bool = False,
                  judge_compares_target: bool = False) -> ExperimentTask:
    """Pair sum (`tasks/pair_sum.py`): "pair 3 7 1 8 5 2 = 12:" -> " 5 7", with sort's model size and judge prompt.
    `reasoned_judge`: the judge looks up and adds the answer's digits before its score (`check_steps`);
    `judge_compares_target`: it also compares the sum with the target; `meta_wrong_look_ups`: the meta-judge also
    learns judgement pairs whose wrong judgement has a wrong look-up (`wrong_look_up`)."""
    if meta_wrong_look_ups and not reasoned_judge:
        raise ValueError("pair_sum_task: meta_wrong_look_ups (--meta-wrong-look-ups) are wrong look-ups, and only the "
                         "reasoned judge writes look-ups: add reasoned_judge=True (--reasoned-judge)")
    if judge_compares_target and not reasoned_judge:
        raise ValueError("pair_sum_task: judge_compares_target (--judge-compares-target) adds a step to the reasoned "
                         "judge's: add reasoned_judge=True (--reasoned-judge)")
    tokenizer = CharTokenizer()
    steps = partial(check_steps, compare_target=True) if judge_compares_target else check_steps
    wrong_judgement = partial(wrong_look_up, compare_target=True) if judge_compares_target else wrong_look_up

    return ExperimentTask(
        make_model=rotary_model_maker(tokenizer.num_tokens, dim, depth, max_seq_len),
        encode=tokenizer.encode, decode=tokenizer.decode,
        instruction_examples=lambda n, seed: pair_sum.PairSumTask(length, seed).instruction_examples(n),
        prompts=lambda n, seed: pair_sum.PairSumTask(length, seed).prompts(n),
        checker=pair_sum.is_correct, answer_key=pair_sum.answer_key,
        reward_config=judge_prompt(),
        max_seq_len=max_seq_len, max_new_tokens=8, eos_id=tokenizer.eos_id,
        judge_rationale=steps if reasoned_judge else None,
        judge_max_new_tokens=(27 if judge_compares_target else 24) if reasoned_judge else 10,  # room for the longest + EOS
        meta_judge_config=meta_judge_prompt(),
        meta_judge_max_new_tokens=10,
        meta_wrong_judgement=wrong_judgement if meta_wrong_look_ups else None,
    )


TASKS = dict(sort=sort_digits_task, pair_sum=pair_sum_task)
TASK_TITLES = dict(sort="sort 5 digits", pair_sum="pair sum, 6 digits")
# the command line's flags that build the task (`build_task`), with their defaults; a run folder's settings.json
# records them (examples/self_improvement.py), so that scripts reading the folder build the same task
TASK_FLAGS = {"reasoned_judge": False, "max_seq_len": 64, "meta_wrong_look_ups": False, "judge_compares_target": False,
              "dim": None, "depth": None}


def build_task(task: str, reasoned_judge: bool = False, max_seq_len: int = 64, meta_wrong_look_ups: bool = False,
               judge_compares_target: bool = False, dim: int | None = None, depth: int | None = None) -> ExperimentTask:
    """The `ExperimentTask` of the command line's `--task` and task flags (dim, depth None: the task's own)."""
    if task not in TASKS:
        raise ValueError(f"task {task!r} is not one of {sorted(TASKS)}")
    options = {"meta_wrong_look_ups": meta_wrong_look_ups, "judge_compares_target": judge_compares_target
               } if task == "pair_sum" else {}
    options.update({name: value for name, value in (("dim", dim), ("depth", depth)) if value is not None})
    return TASKS[task](reasoned_judge=reasoned_judge, max_seq_len=max_seq_len, **options)


def recorded_task_flags(record: dict, given: dict, folder: str) -> dict:
    """The task and task flags of a run folder (`record`: what its settings.json records beside the settings), for a
    script that reads the folder. `given`: the script's own flags (None: not given). A given flag that contradicts
    the folder's is an error naming both; a folder written before the flags were recorded needs the task and
    whether the judge is reasoned to be given."""
    flags = {"task": None, **TASK_FLAGS}
    resolved = {}
    for name, default in flags.items():
        recorded, mine = record.get(name), given.get(name)
        option = "--" + name.replace("_", "-")
        if name in record:
            if mine is not None and mine != recorded:
                raise ValueError(f"{option} {mine} contradicts the run folder {folder}, whose settings.json records "
                                 f"{name}={recorded!r}: leave {option} out to use the folder's")
            resolved[name] = recorded
        elif mine is not None:
            resolved[name] = mine
        elif name in ("task", "reasoned_judge"):
            raise ValueError(f"{folder}/settings.json does not record the task and its flags (written before they "
                             f"were recorded): give --task and --reasoned-judge or --no-reasoned-judge as the run had "
                             f"them")
        else:
            resolved[name] = default
    return resolved


# each task's departures from the ExperimentSettings defaults (applied before --quick and --set; docs/results.md
# says how they were chosen). Pair sum's judge needs far more judge training than sort's; replaying a quarter of the
# instruction examples in those epochs keeps the seed model weak enough to gain from its own pairs; more prompts per
# iteration give the LLM-judge arms enough pairs; the round on the seed judge's mistakes keeps it accurate on the
# answers of the actor it trains
TASK_SETTINGS = dict(sort={}, pair_sum=dict(num_instruction_examples=1_500, num_eft_prompts=6_000, eft_epochs=4,
                                            eft_instruction_replay_share=0.25, eft_mistake_prompts=6_000,
                                            dpo_learning_rate=3e-5, prompts_per_iteration=1_536,
                                            num_preference_pairs=768))

# `--quick`, a smoke run: these settings, over the task's
QUICK = dict(seeds=(0,), iterations=2, num_eft_prompts=200, prompts_per_iteration=128, num_preference_pairs=128,
             num_eval_prompts=200, num_judge_eval_prompts=48)
# ... and these at most (a phase that is off, at 0, stays off): pair sum's judge-mistake round shrinks too. The
# instruction examples are kept: fewer leave a pair-sum seed model too weak to answer (13% exact match on 700)
QUICK_CAPS = {"eft_mistake_prompts": 200}
# what a quick run says at its start and in its results.md
QUICK_NOTE = ("A --quick run is a smoke run: it checks that every phase runs, and it cannot show the gain. One seed "
              "and few prompts ({eft} judge-training prompts, {prompts} per iteration, {eval} held-out) leave the "
              "judge undertrained (pair sum's is near chance: its full run trains on 6,000 prompts and 6,000 more in "
              "the mistake round) and put the arms' differences within noise: over 5 seeds the recorded runs' 95% "
              "intervals are 3-6 points wide on each side (docs/results.md).")


def quick_settings(settings: dict) -> dict:
    """`settings` (ExperimentSettings fields) shrunk for `--quick`: QUICK set, QUICK_CAPS as upper bounds."""
    shrunk = {**settings, **QUICK}
    for name, cap in QUICK_CAPS.items():
        if name in shrunk:
            shrunk[name] = min(shrunk[name], cap)
        else:
            shrunk[name] = min(getattr(ExperimentSettings, name), cap)
    return shrunk
