"""Judge-training (EFT) examples built from the model's OWN answers (Yuan et al. 2024, section 2.1).

The paper's seed judge data are its seed model's responses, labelled once. A judge learns best on the distribution
it will judge, so here the model answers seed prompts, a seed labeller (human labels, or a checker where the task
has one) labels each distinct answer once, and each (prompt, answer, label) becomes an SFT example: the judge
prompt of a `RewardConfig`, then the target text for the label. This runs once, before the first self-reward
iteration: no labeller is called inside the iterations.

    judge_set = own_answer_judge_examples(model, seed_prompts, labeller=is_correct, reward_config=reward_config,
                                          tokenizer_encode=encode, tokenizer_decode=decode, eos_id=eos_id,
                                          max_new_tokens=16)
    SFTConfig(train_dataset=ift_examples + judge_set.examples, ...)
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from self_rewarding_lm_pytorch.data.datasets import as_token_tensor
from self_rewarding_lm_pytorch.data.fields import ExampleEncoder, FieldDataset, SFTFields
from self_rewarding_lm_pytorch.generation.backend import LibrarySampler, Sampler
from self_rewarding_lm_pytorch.generation.sampling import top_p
from self_rewarding_lm_pytorch.judging.judge_prompt import RewardConfig
from self_rewarding_lm_pytorch.judging.judges import Candidates, SelfJudge, strip_response
from self_rewarding_lm_pytorch.judging.meta_judge import MetaJudgeConfig


def two_point_targets(correct: str = "Score: 5", wrong: str = "Score: 0") -> Callable[[float | bool], str]:
    """Targets for a labeller that says right or wrong: a small model learns to check an answer far more reliably
    than to grade partial credit."""

    def target(label: float | bool) -> str:
        return correct if label else wrong

    target.__name__ = f"two_point_targets({correct!r}, {wrong!r})"
    return target


def five_point_targets(template: str = "Score: {score}") -> Callable[[float | bool], str]:
    """Targets on the paper's 0-5 scale: the labeller gives a score in [0, 5], rounded to an integer."""

    def target(label: float | bool) -> str:
        score = float(label)
        if not 0 <= score <= 5:
            raise ValueError(f"five_point_targets: the labeller returned {score}, outside the 0-5 scale")
        return template.format(score=round(score))

    target.__name__ = f"five_point_targets({template!r})"
    return target


@dataclass
class JudgeTrainingSet:
    """EFT examples `(judge prompt + target + EOS, judge prompt length)`, ready for an SFT stage, and their counts."""

    examples: list[tuple[Tensor, int]]
    target_counts: dict[str, int]  # examples per target text, after balancing
    answers_sampled: int
    distinct_answers: int  # (prompt, answer) pairs labelled: the labeller's calls
    label_counts_before_balancing: dict[str, int] = field(default_factory=dict)
    labelled: list[tuple[str, str, float | bool]] = field(default_factory=list)  # (prompt, answer, label) of the examples


@torch.no_grad()
def own_answer_judge_examples(
    model: nn.Module,
    prompts: Sequence[str],
    *,
    labeller: Callable[[str, str], float | bool],
    reward_config: RewardConfig,
    tokenizer_encode: Callable[[str], Tensor],
    tokenizer_decode: Callable[[Tensor], str],
    targets: Callable[[float | bool], str] = two_point_targets(),
    rationale: Callable[[str, str], str] | None = None,
    num_samples: int = 4,
    max_new_tokens: int = 64,
    temperature: float | Sequence[float] = 0.7,
    top_p_threshold: float | None = 0.9,
    balance: bool = True,
    pad_id: int = -1,
    eos_id: int | None = None,
    batch_size: int = 64,
    seed: int = 0,
    show_progress: bool = True,
    sampler: Sampler = LibrarySampler(),
) -> JudgeTrainingSet:
    """Sample `num_samples` answers per prompt from `model` (at each `temperature` when several are given: greedy
    and sampled answers are the two kinds the judge will see), label each distinct (prompt, answer) once with
    `labeller(prompt, answer)`, and render each as a judge example whose target is `targets(label)`, after
    `rationale(prompt, answer)` when given: a judgement that reasons before it scores, as the paper's judge prompt
    asks ("Briefly justify your total score"), e.g. a reference answer worked out before comparing.

    `balance=True` keeps as many examples of each target as of the rarest one (a random subset, seeded): a small
    model's answers are mostly right or mostly wrong, and a judge trained on that skew learns to say the common
    label; when every answer gets the same target there is nothing to balance, and that is an error (a judge
    trained on one label can only say that label). Examples with a target the judge's `reward_config` cannot parse
    are refused: the judge would learn an answer that pair generation then cannot read. `show_progress`: a bar over
    the sampling batches (pass False on every process but the main one). `sampler`: the generation backend that
    samples the answers (generation/backend.py; e.g. `make_sampler(VLLMConfig(...))` for a HuggingFace model), the
    library's own sampler by default; it is released once the answers are sampled."""
    if not prompts:
        raise ValueError("own_answer_judge_examples got no prompts")
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"num_samples and batch_size must be >= 1, got {num_samples} and {batch_size}")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise TypeError(f"prompts[{i}] is a {type(prompt).__name__}; prompts are strings (encoded with tokenizer_encode)")

    # 1) the model's answers, `num_samples` per prompt and temperature, in batches
    temperatures = [temperature] if isinstance(temperature, (int, float)) else list(temperature)
    answers: list[tuple[str, str]] = []
    batches = [(t, start) for t in temperatures for start in range(0, len(prompts), batch_size)]
    for t, start in tqdm(batches, desc="judge examples: answers", unit="batch", disable=not show_progress):
        chunk = list(prompts[start : start + batch_size])
        ids = [as_token_tensor(tokenizer_encode(p), "encoded prompt") for p in chunk]
        out = sampler(
            model, ids, temperature=t,
            filter_fn=top_p if top_p_threshold is not None and t > 0 else None,
            filter_kwargs=dict(thres=top_p_threshold) if top_p_threshold is not None and t > 0 else None,
            pad_id=pad_id, eos_id=eos_id, max_new_tokens=max_new_tokens, num_samples=1 if t == 0 else num_samples,
            generator=seed + start,
        )
        texts = [tokenizer_decode(strip_response(row.cpu(), pad_id, eos_id)) for row in out]
        per_prompt = len(texts) // len(chunk)
        answers += [(chunk[i // per_prompt], text) for i, text in enumerate(texts)]
    sampler.release()

    # 2) each distinct answer labelled once, rendered as a judge prompt and its target
    distinct = list(dict.fromkeys(answers))
    by_target: dict[str, list[tuple[str, str]]] = {}
    labels = {}
    for prompt, answer in distinct:
        label = labels[(prompt, answer)] = labeller(prompt, answer)
        if not isinstance(label, (bool, int, float)):
            raise TypeError(f"labeller {getattr(labeller, '__name__', labeller)!r} returned {label!r} for {answer!r}; "
                            f"it must return a number or a bool")
        target = targets(label)
        if reward_config.parse(target) is None:
            raise ValueError(f"the target {target!r} does not parse with the RewardConfig's reward regex: the judge "
                             f"would learn to answer in a format pair generation cannot read")
        by_target.setdefault(target, []).append((prompt, answer))
    before = {target: len(items) for target, items in by_target.items()}

    # 3) balanced labels (seeded), then the SFT examples
    if balance and len(by_target) == 1:
        raise ValueError(
            f"all {len(distinct)} distinct answers got the same judge target {next(iter(by_target))!r}: a judge trained "
            f"on them can only say that. Sample at other temperatures (e.g. temperature=(0.0, 0.7)), use more prompts, "
            f"or train the model further first (or pass balance=False to keep them as they are)"
        )
    if balance:
        rarest = min(before.values())
        rng = random.Random(seed)
        by_target = {target: rng.sample(items, rarest) for target, items in by_target.items()}
    labelled = [(prompt, answer, labels[(prompt, answer)]) for items in by_target.values() for prompt, answer in items]
    examples = labelled_judge_examples(labelled, reward_config=reward_config, tokenizer_encode=tokenizer_encode,
                                       targets=targets, rationale=rationale, eos_id=eos_id)
    random.Random(seed + 1).shuffle(examples)
    return JudgeTrainingSet(
        examples=examples,
        target_counts=dict(Counter({t: len(items) for t, items in by_target.items()})),
        answers_sampled=len(answers),
        distinct_answers=len(distinct),
        label_counts_before_balancing=before,
        labelled=labelled,
    )


def labelled_judge_examples(
    labelled: Sequence[tuple[str, str, float | bool]],
    *,
    reward_config: RewardConfig,
    tokenizer_encode: Callable[[str], Tensor],
    targets: Callable[[float | bool], str] = two_point_targets(),
    rationale: Callable[[str, str], str] | None = None,
    eos_id: int | None = None,
) -> list[tuple[Tensor, int]]:
    """Each (prompt, answer, label) as a judge example: the judge prompt, then `rationale(prompt, answer)` (when
    given) and `targets(label)`, then EOS; items are (ids, judge prompt length), in the order given."""
    examples = []
    for prompt, answer, label in labelled:
        target = targets(label)
        judge_prompt = as_token_tensor(tokenizer_encode(reward_config.render(prompt, answer)), "encoded judge prompt")
        text = target if rationale is None else f"{rationale(prompt, answer)}{target}"
        if reward_config.parse(text) != reward_config.parse(target):
            raise ValueError(f"with its rationale, the judge target {text!r} parses to {reward_config.parse(text)}, "
                             f"not {reward_config.parse(target)}: the rationale must not look like a score")
        answer_ids = as_token_tensor(tokenizer_encode(text), "encoded target")
        tail = [answer_ids] + ([torch.tensor([eos_id])] if eos_id is not None else [])
        examples.append((torch.cat([judge_prompt, *tail]), len(judge_prompt)))
    return examples


@torch.no_grad()
def judge_mistakes(
    model: nn.Module,
    labelled: Sequence[tuple[str, str, float | bool]],
    *,
    reward_config: RewardConfig,
    tokenizer_encode: Callable[[str], Tensor],
    tokenizer_decode: Callable[[Tensor], str],
    targets: Callable[[float | bool], str] = two_point_targets(),
    max_new_tokens: int = 64,
    pad_id: int = -1,
    eos_id: int | None = None,
    batch_size: int = 64,
    show_progress: bool = True,
) -> list[bool]:
    """For each labelled answer (e.g. `JudgeTrainingSet.labelled` of a set made with `balance=False`): does the
    model's judge, greedy, fail to give its target's score (`targets(label)`; no score parsed is a failure)? The
    failures are a trained judge's blind spots, and an actor trained on its rewards finds them; a further round of
    judge training on them (`labelled_judge_examples`) uses seed labels only, made before the first iteration.
    `show_progress`: a bar over the judge's batches."""
    if not labelled:
        return []
    judge = SelfJudge(model, reward_config, tokenizer_encode=tokenizer_encode, tokenizer_decode=tokenizer_decode,
                      num_judgements=1, max_new_tokens=max_new_tokens, temperature=0.0, top_p=None, pad_id=pad_id,
                      eos_id=eos_id, batch_size=batch_size)
    scores = []
    batches = range(0, len(labelled), batch_size)
    for start in tqdm(batches, desc="judge mistakes", unit="batch", disable=not show_progress):
        chunk = labelled[start : start + batch_size]
        prompts, answers = [p for p, _, _ in chunk], [a for _, a, _ in chunk]
        candidates = Candidates(
            prompts=prompts, prompt_ids=[as_token_tensor(tokenizer_encode(p), "encoded prompt") for p in prompts],
            responses=answers, response_ids=[as_token_tensor(tokenizer_encode(a), "encoded answer") for a in answers],
            num_per_prompt=1,
        )
        scores += judge(candidates).scores[:, 0].tolist()
    return [score != reward_config.parse(targets(label)) for score, (_, _, label) in zip(scores, labelled)]


def meta_judge_examples(
    labelled: Sequence[tuple[str, str, float | bool]],
    *,
    reward_config: RewardConfig,
    meta_judge_config: MetaJudgeConfig,
    tokenizer_encode: Callable[[str], Tensor],
    targets: Callable[[float | bool], str] = two_point_targets(),
    wrong_targets: Callable[[float | bool], str] | None = None,
    rationale: Callable[[str, str], str] | None = None,
    wrong_judgement: Callable[[str, str, float | bool], str | None] | None = None,
    balance_wrong_judgements: bool = False,
    eos_id: int | None = None,
    seed: int = 0,
) -> list[tuple[Tensor, int]]:
    """Meta-judge training examples (for Meta-Rewarding, Wu et al. 2024) from labelled answers, e.g.
    `JudgeTrainingSet.labelled`: for each (prompt, answer, label), the right judgement `targets(label)` and a wrong
    one (`wrong_targets(label)`, default `targets(not label)`, for right / wrong labels), each after
    `rationale(prompt, answer)` when given, shown in both orders, the verdict naming the right one. Both orders
    appear equally often, so a meta-judge trained on them learns no favourite position. Items are
    (meta-judge prompt + verdict + EOS, prompt length), shuffled (seeded), ready for an SFT stage.

    Those wrong judgements share the right one's rationale, so they teach only whether a score follows from its
    rationale. `wrong_judgement(prompt, answer, label)`: a whole wrong judgement with a wrong rationale of its own
    and the score that follows from it (e.g. a wrong look-up), the error a judge really makes; each answer it gives
    one for (None: none) adds one more pair of examples, both orders, so the meta-judge learns to check the
    reasoning too, which pairs that share one rationale never make it do.

    `balance_wrong_judgements`: keep as many `wrong_judgement` pairs whose wrong judgement scores higher than the
    right one (a wrong pass) as pairs whose wrong judgement scores lower (a wrong fail), dropping a seeded sample of
    the larger kind. A task's wrong judgements can be far more often of one kind (pair sum: every right answer has a
    wrong look-up that fails it, few wrong answers one that passes them), and a meta-judge trained on that learns to
    prefer the passing judgement whatever its reasoning, so that the actor's wrong answers pass."""
    wrong_targets = wrong_targets or (lambda label: targets(not label))
    pairs = []  # (prompt, answer, right, wrong, kind of a reasoned wrong judgement or None), in the labelled order
    for prompt, answer, label in labelled:
        before = rationale(prompt, answer) if rationale is not None else ""
        right = before + targets(label)
        pairs.append((prompt, answer, right, before + wrong_targets(label), None))
        if wrong_judgement is not None and (reasoned_wrong := wrong_judgement(prompt, answer, label)) is not None:
            passes = _score_of(reward_config, reasoned_wrong) > _score_of(reward_config, right)
            pairs.append((prompt, answer, right, reasoned_wrong, "wrong_pass" if passes else "wrong_fail"))
    if balance_wrong_judgements:
        pairs = _balanced(pairs, seed)
    examples = []
    for prompt, answer, right, wrong, _ in pairs:
        if reward_config.parse(right) == reward_config.parse(wrong):
            raise ValueError(f"meta_judge_examples: the right judgement {right!r} and the wrong one {wrong!r} give "
                             f"the same score; pass wrong_targets (or a wrong_judgement) that score differently")
        examples += _both_orders(prompt, answer, right, wrong, meta_judge_config, tokenizer_encode, eos_id)
    random.Random(seed).shuffle(examples)
    return examples


def _balanced(pairs: list[tuple], seed: int) -> list[tuple]:
    """`pairs` without a seeded sample of the more common kind of reasoned wrong judgement (the last field), so that
    both kinds are left equally often; the rest keep their order."""
    kinds = {kind: [i for i, pair in enumerate(pairs) if pair[-1] == kind] for kind in ("wrong_pass", "wrong_fail")}
    fewest = min(len(indices) for indices in kinds.values())
    if fewest == 0 and any(kinds.values()):
        raise ValueError(f"meta_judge_examples: balance_wrong_judgements would drop every wrong judgement: "
                         f"{len(kinds['wrong_pass'])} pass a wrong answer and {len(kinds['wrong_fail'])} fail a right "
                         f"one. Give a wrong_judgement that makes both kinds, or balance_wrong_judgements=False")
    rng = random.Random(seed)
    dropped = {i for indices in kinds.values() for i in rng.sample(indices, len(indices) - fewest)}
    return [pair for i, pair in enumerate(pairs) if i not in dropped]


def _score_of(reward_config: RewardConfig, judgement: str) -> float:
    score = reward_config.parse(judgement)
    return float("nan") if score is None else score


def _both_orders(prompt, answer, right, wrong, meta_judge_config, tokenizer_encode, eos_id) -> list[tuple[Tensor, int]]:
    """The meta-judge example for `right` vs `wrong` shown first (verdict A), then second (verdict B)."""
    examples = []
    for judgement_a, judgement_b, verdict in ((right, wrong, "A"), (wrong, right, "B")):
        text = meta_judge_config.render(prompt, answer, judgement_a, judgement_b)
        ids = as_token_tensor(tokenizer_encode(text), "encoded meta-judge prompt")
        target = f"Winner: {verdict}"
        if meta_judge_config.parse(target) != "AB".index(verdict):
            raise ValueError(f"meta_judge_examples: the verdict {target!r} does not parse with the MetaJudgeConfig; "
                             f"its verdict_regex_template must read 'Winner: A' / 'Winner: B'")
        tail = [as_token_tensor(tokenizer_encode(target), "encoded verdict")]
        tail += [torch.tensor([eos_id])] if eos_id is not None else []
        examples.append((torch.cat([ids, *tail]), len(ids)))
    return examples


class EFTFields(SFTFields):
    """The paper's EFT seed data (Yuan et al. 2024, section 2.1): the judge prompt of `reward_config` over an
    item's (prompt, response) is the instruction, and the item's `judgement_field` (a justification ending in
    "Score: N") is the reply that trains."""

    def __init__(self, dataset, encode_example: ExampleEncoder, reward_config: RewardConfig | None = None, *,
                 prompt_field: str = "prompt", response_field: str = "response", judgement_field: str = "judgement"):
        self.encode_example = encode_example
        self.reward_config = reward_config or RewardConfig()
        FieldDataset.__init__(self, dataset, dict(prompt_field=prompt_field, response_field=response_field,
                                             judgement_field=judgement_field))

    def conversation(self, item: Mapping, index: int) -> list[dict]:
        judge_prompt = self.reward_config.render(self.field(item, "prompt_field", index),
                                                 self.field(item, "response_field", index))
        return [dict(role="user", content=judge_prompt),
                dict(role="assistant", content=self.field(item, "judgement_field", index))]
