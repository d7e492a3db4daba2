"""What the experiment runner (experiment/runner.py) is given: the task (`ExperimentTask`: a model, a tokenizer, data and a
checker) and the sizes and hyperparameters every arm shares (`ExperimentSettings`, and `setting_value` to read one
from text, as the command line's `--set NAME=VALUE`)."""

from __future__ import annotations

import json
import typing
from collections.abc import Callable, Hashable
from dataclasses import asdict, dataclass
from pathlib import Path

from torch import Tensor, nn

from self_rewarding_lm_pytorch import MetaJudgeConfig, RewardConfig


@dataclass
class ExperimentTask:
    """What the runner needs of a task: a model, a tokenizer, data generators and a checker."""

    make_model: Callable[[int], nn.Module]  # seed -> a fresh model
    encode: Callable[[str], Tensor]
    decode: Callable[[Tensor], str]
    instruction_examples: Callable[[int, int], list]  # (n, seed) -> SFT items (prompt + answer + EOS, prompt_len)
    prompts: Callable[[int, int], list[str]]  # (n, seed) -> prompts
    checker: Callable[[str, str], bool]  # (prompt, response) -> right?
    answer_key: Callable[[str], Hashable | None]  # the final answer of a response, for self-consistency
    reward_config: RewardConfig  # the judge prompt
    max_seq_len: int
    max_new_tokens: int  # answers
    judge_max_new_tokens: int
    eos_id: int | None
    pad_id: int = -1
    judge_rationale: Callable[[str, str], str] | None = None  # (prompt, response) -> text the EFT judge writes first
    meta_judge_config: MetaJudgeConfig | None = None  # the meta-judge prompt (arms that train the judge: meta_reward)
    meta_judge_max_new_tokens: int = 10
    # (prompt, response, label) -> a wrong judgement with wrong reasoning of its own, or None: more meta-judge examples
    # (`meta_judge_examples(wrong_judgement=...)`), so that the meta-judge learns to check the judge's reasoning
    meta_wrong_judgement: Callable[[str, str, bool], str | None] | None = None


@dataclass
class ExperimentSettings:
    """Sizes and hyperparameters shared by every arm. Defaults: the run recorded in docs/results.md."""

    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    iterations: int = 2
    # seed model
    num_instruction_examples: int = 700  # a seed model whose majority answer is worth trusting
    sft_epochs: int = 4
    sft_learning_rate: float = 1e-3
    num_eft_prompts: int = 600
    eft_samples_per_prompt: int = 4
    eft_temperatures: tuple[float, ...] = (0.0, 0.4)  # greedy and sampled answers: both kinds the judge will see
    eft_epochs: int = 1
    eft_learning_rate_factor: float = 1.0
    # the share of the instruction examples replayed beside the judge examples in each EFT epoch: 1.0 keeps answering
    # from being forgotten; less keeps many judge epochs from also making the seed model much stronger
    eft_instruction_replay_share: float = 1.0
    # a second round of judge training, on its blind spots: the trained seed judge judges the seed model's answers to
    # this many fresh seed prompts (labelled once by the checker, before iteration 1), and one more SFT stage trains
    # on its mistakes, beside `eft_judged_right_per_mistake` times as many answers it judged right (so that it does
    # not learn to refuse whatever looks like its mistakes) and the instruction replay: an actor trained on the
    # judge's rewards finds what the judge misses. 0: off. Sampled hotter than `eft_temperatures`: more of the wrong
    # answers a drifting actor will give
    eft_mistake_prompts: int = 0
    eft_mistake_temperatures: tuple[float, ...] = (0.4, 1.0)
    eft_judged_right_per_mistake: float = 4.0
    eft_mistake_epochs: int = 2
    # arms that train a meta-judge (meta_reward): each EFT epoch holds the meta-judge examples this many times, beside
    # the judge examples once: Meta-Rewarding needs a meta-judge better than the judge it judges. Both kinds train in
    # one stage, since the meta-judge examples alone erase the judge's format
    meta_judge_repeats: int = 1
    # the seed meta-judge examples with as many wrong judgements that wrongly pass an answer as wrongly fail one
    # (`meta_judge_examples(balance_wrong_judgements=True)`): a task whose wrong judgements are mostly of one kind
    # otherwise teaches the meta-judge to prefer the other kind's score whatever the reasoning
    meta_balance_wrong_judgements: bool = False
    # each preference iteration
    prompts_per_iteration: int = 768  # a strong model agrees with itself on most prompts: more prompts, enough pairs
    num_preference_pairs: int = 384  # at most; `accept_fewer_pairs` keeps what the prompts give
    num_candidates: int = 8  # self-consistency needs votes (the paper samples 8 or more); also the random control's
    num_judged_candidates: int = 4  # the LLM-judge arms (the paper's N = 4), each judged num_judgements times
    temperature: float = 0.4  # candidates (and judgements); a small model's samples at 0.7 are mostly wrong
    num_judgements: int = 3
    # the LLM-judge arms' judgements (self_judge, self_judge_agree, meta_reward); None: `temperature`. An accurate
    # judge at a low temperature almost never disagrees with itself, and Meta-Rewarding learns only from disagreements
    judge_temperature: float | None = None
    min_vote_margin: float | None = 0.5
    length_control: float | None = None  # meta_reward's actor pairs: the paper's rho; None: best vs worst
    meta_judge_temperature: float = 0.0  # meta_reward's verdicts, one per order of each judgement pair
    # meta_reward: at most this many judge pairs per iteration (None: `num_preference_pairs`, as many as actor pairs);
    # more teach the judge the actor's current errors faster
    meta_num_judge_pairs: int | None = None
    dpo_learning_rate: float = 1e-5
    dpo_beta: float = 0.1
    dpo_epochs: int = 2
    dpo_batch_size: int = 16
    nll_weight: float = 1.0
    # after each preference iteration, every arm alike: one SFT epoch, at the DPO learning rate, on this share of the
    # seed judge examples (made before iteration 1: no new labels), for a judge that its arm's training changes
    # (meta_reward's judge pairs train it). 0: off, the paper's plan
    judge_refresh_share: float = 0.0
    # the same for the seed meta-judge examples, in the same stage (runs with a meta-judge; every arm alike): the
    # meta-judge is the same weights as the actor and the judge, and nothing else trains it after the seed model
    meta_judge_refresh_share: float = 0.0
    # measurement
    num_eval_prompts: int = 400
    num_judge_eval_prompts: int = 96
    eval_split_seed: int = 10_000  # the held-out prompts; tune on another split, report this one

    def dpo_kwargs(self) -> dict:
        return dict(
            learning_rate=self.dpo_learning_rate, end_learning_rate=self.dpo_learning_rate / 10, beta=self.dpo_beta,
            num_epochs=self.dpo_epochs, batch_size=self.dpo_batch_size, grad_accum_steps=1, dropout=0.0,
            nll_weight=self.nll_weight,
        )

    def pair_kwargs(self, task: ExperimentTask, num_candidates: int | None = None) -> dict:
        return dict(
            num_preference_pairs=self.num_preference_pairs, accept_fewer_pairs=True,
            num_candidate_responses=num_candidates or self.num_candidates, temperature=self.temperature, top_p=None,
            prompt_batch_size=64, response_max_new_tokens=task.max_new_tokens, max_seq_len=task.max_seq_len,
            verifier=task.checker,
        )


def setting_value(name: str, text: str):
    """The value of `ExperimentSettings.<name>` written as `text` (`--set NAME=TEXT`), of the field's declared type:
    `int | None` fields take ints, not floats, and bool fields "true" or "false" (bool("False") is True)."""
    declared = typing.get_type_hints(ExperimentSettings)[name]
    kinds = [kind for kind in typing.get_args(declared) if kind is not type(None)] or [declared]
    if kinds[0] is bool:
        if text.lower() not in ("true", "false"):
            raise ValueError(f"--set {name}={text}: ExperimentSettings.{name} is true or false")
        return text.lower() == "true"
    return kinds[0](text)


# settings a run folder's settings.json may hold that ExperimentSettings does not: each is read only at the value that
# leaves the run as ExperimentSettings describes it
DROPPED_SETTINGS = dict(meta_dissent_judgements=0, meta_dissent_temperature=None)


def run_record(settings: ExperimentSettings, record: dict | None = None) -> dict:
    """What a run folder's settings.json holds: `record` (the command line's task and flags, as
    examples/self_improvement.py gives them) and the settings, under "settings"."""
    return {**(record or {}), "settings": asdict(settings)}


def read_run(path: Path) -> tuple[ExperimentSettings, dict]:
    """A runner's settings.json (`ExperimentRunner.run` writes it): its `ExperimentSettings`, and what it records
    beside them (the task and the command line's flags; {} for a folder written before they were recorded, whose
    settings.json holds the settings alone)."""
    values = json.loads(Path(path).read_text())
    record = {}
    if isinstance(values.get("settings"), dict):
        record = {k: v for k, v in values.items() if k != "settings"}
        values = values["settings"]
    for name, off in DROPPED_SETTINGS.items():
        if name in values and values.pop(name) != off:
            raise ValueError(f"{path}: {name} is not an ExperimentSettings field, and this run set it (only "
                             f"{name}={off!r} reads as these settings): read this folder with the library version "
                             f"that wrote it")
    return ExperimentSettings(**values), record


def read_settings(path: Path) -> ExperimentSettings:
    """A runner's settings.json as `ExperimentSettings` (`read_run`)."""
    return read_run(path)[0]
