"""The experiment runner's measurements (experiment/runner.py): held-out exact match, and the LLM judge's and the
self-consistency votes' balanced accuracy against the checker on the model's own sampled answers. `task` and
`settings` are the runner's `ExperimentTask` and `ExperimentSettings`."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from self_rewarding_lm_pytorch import sample
from self_rewarding_lm_pytorch.experiment.settings import ExperimentSettings, ExperimentTask
from self_rewarding_lm_pytorch.judging.judges import Candidates, SelfJudge, strip_response
from self_rewarding_lm_pytorch.judging.self_consistency import SelfConsistencyJudge


def balanced_accuracy(predicted: Sequence[bool], actual: Sequence[bool]) -> float:
    """Mean of the true-positive and true-negative rates; NaN when either class is absent."""
    positives = [p for p, a in zip(predicted, actual) if a]
    negatives = [not p for p, a in zip(predicted, actual) if not a]
    if not positives or not negatives:
        return math.nan
    return (sum(positives) / len(positives) + sum(negatives) / len(negatives)) / 2


def sampled_answers(model: nn.Module, task: ExperimentTask, settings: ExperimentSettings, prompts: list[str],
                    seed: int) -> Candidates:
    """`settings.num_candidates` answers per prompt at the candidates' temperature: what the judge is measured on."""
    n = settings.num_candidates
    prompt_ids = [task.encode(p) for p in prompts]
    sampled = sample(model, prompt_ids, temperature=settings.temperature, eos_id=task.eos_id, pad_id=task.pad_id,
                     max_new_tokens=task.max_new_tokens, seq_len=task.max_seq_len, num_samples=n, generator=seed)
    response_ids = [strip_response(row.cpu(), task.pad_id, task.eos_id) for row in sampled]
    return Candidates(
        prompts=[p for p in prompts for _ in range(n)], prompt_ids=[ids for ids in prompt_ids for _ in range(n)],
        responses=[task.decode(ids) for ids in response_ids], response_ids=response_ids, num_per_prompt=n,
    )


def judge_scores_of(model: nn.Module, task: ExperimentTask, candidates: Candidates) -> Tensor:
    """The model's LLM judge, greedy, one judgement per candidate (NaN where no score parses)."""
    judge = SelfJudge(model, task.reward_config, tokenizer_encode=task.encode, tokenizer_decode=task.decode,
                      num_judgements=1, max_new_tokens=task.judge_max_new_tokens, temperature=0.0, top_p=None,
                      pad_id=task.pad_id, eos_id=task.eos_id, batch_size=64)
    return judge(candidates).scores[:, 0]


def says_right(judge_scores: Tensor, task: ExperimentTask) -> list[bool]:
    low, high = task.reward_config.score_range or (0.0, 5.0)
    return [bool(s > (low + high) / 2) for s in judge_scores.tolist()]  # NaN (no score) is "wrong"


@torch.no_grad()
def measure(model: nn.Module, task: ExperimentTask, settings: ExperimentSettings, eval_prompts: list[str],
            judge_prompts: list[str], seed: int) -> dict:
    """Held-out exact match, and the LLM judge's and the votes' balanced accuracy on the model's own answers."""
    greedy = sample(model, [task.encode(p) for p in eval_prompts], temperature=0.0, eos_id=task.eos_id,
                    pad_id=task.pad_id, max_new_tokens=task.max_new_tokens, seq_len=task.max_seq_len)
    answers = [task.decode(strip_response(row.cpu(), task.pad_id, task.eos_id)) for row in greedy]
    exact_match = sum(task.checker(p, a) for p, a in zip(eval_prompts, answers)) / len(eval_prompts)

    candidates = sampled_answers(model, task, settings, judge_prompts, seed)
    right = [task.checker(p, r) for p, r in zip(candidates.prompts, candidates.responses)]
    judge_scores = judge_scores_of(model, task, candidates)
    judge_says_right = says_right(judge_scores, task)
    votes = SelfConsistencyJudge(task.answer_key)(candidates).scores[:, 0]
    vote_says_right = [bool(v > 0.5) for v in votes.tolist()]
    return dict(
        exact_match=exact_match,
        sampled_accuracy=sum(right) / len(right),
        judge_bacc=balanced_accuracy(judge_says_right, right),
        judge_parse_rate=float((~judge_scores.isnan()).float().mean()),
        vote_bacc=balanced_accuracy(vote_says_right, right),
    )
