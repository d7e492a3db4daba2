"""Judges score (prompt, response) candidates for pair generation.

A judge returns a float tensor of scores, NaN where it produced no usable score; it never returns a
sentinel number. Three kinds here, and `SelfConsistencyJudge` (judging/self_consistency.py) beside them:
- `SelfJudge`: the policy itself as LLM-as-a-judge (Yuan et al. 2024, section 2.2): the judge prompt of a
  `RewardConfig` is rendered per candidate, sampled K times in one batched call with its own token budget
  (the original counted the ~1.8k-character judge prompt against the response cap and never answered),
  and each answer is parsed.
- `RewardModelJudge`: a Module scoring token ids.
- `RewardFnJudge`: a callable on the decoded prompt and response, e.g. an exact checker.
"""

from __future__ import annotations

import inspect
import math
import numbers
from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from accelerate.utils import extract_model_from_parallel
from torch import Tensor, nn

from self_rewarding_lm_pytorch.data.datasets import as_token_tensor, pad_right
from self_rewarding_lm_pytorch.generation.backend import LibrarySampler, Sampler
from self_rewarding_lm_pytorch.generation.sampling import top_p
from self_rewarding_lm_pytorch.judging.judge_prompt import RewardConfig
from self_rewarding_lm_pytorch.models.decoders import absolute_position_limit
from self_rewarding_lm_pytorch.models.sharding import idle_forward, max_over_ranks


@dataclass
class Candidates:
    """A batch of candidate responses to judge: row i answers `prompts[i]`."""

    prompts: list[str]
    prompt_ids: list[Tensor]
    responses: list[str]
    response_ids: list[Tensor]  # without padding; may end in EOS
    num_per_prompt: int = 1  # rows are prompt-major: rows [i * n, (i + 1) * n) answer the same prompt


@dataclass
class Judgements:
    scores: Tensor  # (num_candidates, num_judgements) float, NaN where no score was produced
    raw_outputs: list[list[str]] | None = None  # the judge's text per candidate, for people to read
    output_ids: list[list[Tensor]] | None = None  # the judge's tokens per candidate (up to its EOS, kept), to train on


class Judge(Protocol):
    num_judgements: int

    def __call__(self, candidates: Candidates, seed: int | None = None) -> Judgements: ...

    def is_valid_score(self, score: float) -> bool:
        """Whether a score is on the judge's scale (e.g. 0-5 for the paper's prompt)."""


class SelfJudge:
    """The model judges its own candidates with the LLM-as-a-judge prompt of `reward_config`.

    `share_prefix`: the encoded judge prompts of a call begin with the same tokens (the template's text before
    `{{ prompt }}`, and with a chat template the system turn and the user header before it), so each sampler call
    computes their longest common token prefix once for all rows (its KV cache is reused), when it is at least
    `MIN_SHARED_PREFIX` tokens. It is read from the encoded prompts themselves, so a tokenizer that wraps text in a chat
    turn or merges tokens across the placeholder shares what is really common. The judgements are the same either way.
    `sampler`: the generation backend (generation/backend.py; default the library's `sample`)."""

    def __init__(
        self,
        model: nn.Module,
        reward_config: RewardConfig,
        *,
        tokenizer_encode: Callable[[str], Tensor],
        tokenizer_decode: Callable[[Tensor], str],
        num_judgements: int = 3,
        max_new_tokens: int = 256,
        temperature: float = 0.7,
        top_p: float | None = 0.9,
        pad_id: int = -1,
        eos_id: int | None = None,
        batch_size: int = 16,
        share_prefix: bool = True,
        sampler: Sampler | None = None,
    ):
        self.model = model
        self.sampler = sampler or LibrarySampler()
        self.share_prefix = share_prefix
        self.reward_config = reward_config
        self.batch_size = batch_size
        self.encode, self.decode = tokenizer_encode, tokenizer_decode
        self.num_judgements = num_judgements
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.pad_id, self.eos_id = pad_id, eos_id

    def __call__(self, candidates: Candidates, seed: int | None = None) -> Judgements:
        judge_prompts = [
            as_token_tensor(self.encode(self.reward_config.render(prompt, response)), "encoded judge prompt")
            for prompt, response in zip(candidates.prompts, candidates.responses)
        ]
        limit = absolute_position_limit(extract_model_from_parallel(self.model))
        longest = max((len(ids) for ids in judge_prompts), default=0)
        if limit is not None and longest + self.max_new_tokens > limit:
            raise ValueError(
                f"a judge prompt is {longest} tokens; with room for a {self.max_new_tokens}-token answer it needs "
                f"{longest + self.max_new_tokens} positions, but the model has max_seq_len {limit}. Use a shorter "
                f"RewardConfig prompt (the paper's is about 1,750 characters), a smaller judge_max_new_tokens or "
                f"response_max_new_tokens, or a model with a longer max_seq_len"
            )
        # K judgements per candidate, `batch_size` candidates per sampler call (each judge prompt is prefilled once):
        # judge prompts are long, and their attention and cache grow with batch x length. A sharded model: every rank
        # makes as many sampler calls as the busiest one (with no rows when it has none left).
        prefix = self._shared_prefix(judge_prompts)
        if prefix is not None:
            judge_prompts = [ids[len(prefix):] for ids in judge_prompts]
        answers = []
        for call in range(max_over_ranks(math.ceil(len(judge_prompts) / self.batch_size), self.model)):
            start = call * self.batch_size
            answers += list(self.sampler(
                self.model,
                judge_prompts[start : start + self.batch_size],
                shared_prefix=prefix,
                temperature=self.temperature,
                filter_fn=top_p if self.top_p is not None else None,
                filter_kwargs=dict(thres=self.top_p) if self.top_p is not None else None,
                pad_id=self.pad_id,
                eos_id=self.eos_id,
                max_new_tokens=self.max_new_tokens,
                num_samples=self.num_judgements,
                generator=None if seed is None else seed + start,
            ))
        texts = [self.decode(strip_response(answer, self.pad_id, self.eos_id)) for answer in answers]
        k = self.num_judgements
        raw = [texts[i : i + k] for i in range(0, len(texts), k)]
        ids = [answer[answer != self.pad_id].cpu() for answer in answers]
        scores = torch.tensor(
            [[_score_or_nan(self.reward_config.parse(text)) for text in row] for row in raw], dtype=torch.float
        ).reshape(len(raw), k)
        return Judgements(scores, raw, [ids[i : i + k] for i in range(0, len(ids), k)])

    def is_valid_score(self, score: float) -> bool:
        return self.reward_config.is_in_range(score)

    def _shared_prefix(self, judge_prompts: list[Tensor]) -> Tensor | None:
        """The longest common token prefix of the judge prompts (leaving each at least one token after it) when
        there are two or more prompts and it has at least `MIN_SHARED_PREFIX` tokens, else None."""
        if not self.share_prefix or len(judge_prompts) < 2:
            return None
        prefix = longest_common_prefix(judge_prompts)
        return prefix if len(prefix) >= MIN_SHARED_PREFIX else None


MIN_SHARED_PREFIX = 16  # shorter common prefixes are run in every row: computing them once saves less than a forward


def longest_common_prefix(rows: list[Tensor]) -> Tensor:
    """The longest run of tokens that begins every row, cut to leave every row at least one token after it."""
    limit = min(len(row) for row in rows) - 1
    if limit <= 0:
        return rows[0][:0]
    first = rows[0][:limit]
    same = torch.ones(limit, dtype=torch.bool, device=first.device)
    for row in rows[1:]:
        same &= row[:limit] == first
    differs = (~same).nonzero()
    return first[: int(differs[0, 0]) if len(differs) else limit]


class RewardFnJudge:
    """Scores from `reward_fn(prompt, response) -> float | bool | None` on decoded text (None: no score)."""

    num_judgements = 1

    def __init__(self, reward_fn: Callable[[str, str], float | bool | None]):
        check_reward_fn_signature(reward_fn, "RewardFnJudge.reward_fn")
        self.reward_fn = reward_fn

    def __call__(self, candidates: Candidates, seed: int | None = None) -> Judgements:
        scores = [self.score(p, r) for p, r in zip(candidates.prompts, candidates.responses)]
        return Judgements(torch.tensor(scores, dtype=torch.float)[:, None])

    def score(self, prompt: str, response: str) -> float:
        """One call of `reward_fn`: a number or a bool is the score, None is no score; anything else (a string
        like "5" included: converting it would hide a bug in the function) is an error naming the function."""
        return check_reward_value(self.call(prompt, response), self.reward_fn, prompt, response)

    def call(self, prompt: str, response: str):
        """`reward_fn(prompt, response)`; an exception in it keeps its type and gains a note (shown in the
        traceback) naming the function and the candidate it failed on."""
        try:
            return self.reward_fn(prompt, response)
        except Exception as error:
            name = getattr(self.reward_fn, "__qualname__", None) or repr(self.reward_fn)
            error.add_note(f"raised by reward_fn {name} on prompt {prompt[:80]!r} and response {response[:80]!r}")
            raise

    def is_valid_score(self, score: float) -> bool:
        return True


class RewardModelJudge:
    """Scores from a Module over prompt + response token ids, right-padded.

    The output may be (b,) or (b, 1) scores, or (b, classes) logits, scored as the expected class index
    (a classifier of ratings 0..C-1). If the module's forward takes a `mask` argument (x-transformers does),
    it receives the non-padding mask; otherwise it sees padding as token 0 after the sequence."""

    num_judgements = 1

    def __init__(self, reward_model: nn.Module, pad_id: int = -1, batch_size: int = 32):
        self.reward_model = reward_model
        self.pad_id = pad_id
        self.batch_size = batch_size
        self.takes_mask = "mask" in inspect.signature(reward_model.forward).parameters

    @torch.no_grad()
    def __call__(self, candidates: Candidates, seed: int | None = None) -> Judgements:
        device = next(self.reward_model.parameters(), torch.empty(0)).device
        seqs = [torch.cat([p, r]) for p, r in zip(candidates.prompt_ids, candidates.response_ids)]
        was_training = self.reward_model.training
        self.reward_model.eval()
        scores = [torch.empty(0)]
        # a sharded reward model: every rank runs as many forwards as the busiest one (idle ones when out of rows)
        for call in range(max_over_ranks(math.ceil(len(seqs) / self.batch_size), self.reward_model)):
            chunk = seqs[call * self.batch_size : (call + 1) * self.batch_size]
            if not chunk:
                idle_forward(self.reward_model)
                continue
            ids, is_padding = pad_right(chunk, self.pad_id)
            ids, is_padding = ids.to(device), is_padding.to(device)
            kwargs = dict(mask=~is_padding) if self.takes_mask else {}
            scores.append(reward_model_scores(self.reward_model(ids.clamp(min=0), **kwargs), len(ids)).float().cpu())
        self.reward_model.train(was_training)
        return Judgements(torch.cat(scores)[:, None])

    def is_valid_score(self, score: float) -> bool:
        return True


def reward_model_scores(output, batch: int) -> Tensor:
    if not torch.is_tensor(output):
        raise TypeError(
            f"the reward model returned {type(output).__name__}; it must return a tensor of scores (b,), (b, 1) "
            f"or class logits (b, classes)"
        )
    if output.shape == (batch,):
        return output
    if output.ndim == 2 and output.shape[0] == batch:
        if output.shape[1] == 1:
            return output[:, 0]
        classes = torch.arange(output.shape[1], device=output.device, dtype=torch.float)
        return (output.float().softmax(dim=-1) * classes).sum(dim=-1)
    raise ValueError(
        f"the reward model returned shape {tuple(output.shape)} for {batch} sequences; expected ({batch},), "
        f"({batch}, 1) or ({batch}, classes). A language model's (b, n, vocab) logits are not a reward: pool them "
        f"into one score per sequence, or use a reward_fn"
    )


def strip_response(tokens: Tensor, pad_id: int, eos_id: int | None) -> Tensor:
    """The generated text tokens: padding dropped, cut before the first EOS."""
    tokens = tokens[tokens != pad_id]
    if eos_id is not None:
        is_eos = (tokens == eos_id).nonzero()
        if len(is_eos):
            tokens = tokens[: is_eos[0, 0]]
    return tokens


def check_reward_fn_signature(reward_fn, where: str):
    """Raise TypeError, naming `where` (e.g. `ExternalRewardDPOConfig.reward_fn`), unless `reward_fn` is a callable
    that takes `(prompt, response)`: two positional strings, the decoded prompt and the answer. A callable whose
    signature Python cannot read (some builtins) is accepted."""
    expected = "(prompt: str, response: str) -> float | bool | None (None: no score)"
    if not callable(reward_fn):
        raise TypeError(f"{where} must be a callable {expected}, got a {type(reward_fn).__name__}")
    try:
        signature = inspect.signature(reward_fn)
    except (TypeError, ValueError):
        return
    try:
        signature.bind("prompt", "response")
    except TypeError:
        name = (getattr(reward_fn, "__qualname__", None) or type(reward_fn).__name__).split(".<locals>.")[-1]
        raise TypeError(
            f"{where} is called as {where.rsplit('.', 1)[-1]}(prompt, response), with the decoded prompt and the "
            f"model's answer, but {name}{signature} does not take those two arguments: define it as "
            f"def {where.rsplit('.', 1)[-1]}{expected}, binding any other argument first (functools.partial)"
        ) from None


def check_reward_value(value, reward_fn: Callable, prompt: str, response: str, role: str = "reward_fn") -> float:
    """`value` returned by `reward_fn(prompt, response)` as a float score (NaN for None); `role` names the
    function in the error (`reward_fn`, `verifier`)."""
    if value is None:
        return float("nan")
    if isinstance(value, numbers.Real) or (torch.is_tensor(value) and value.numel() == 1 and not value.is_complex()):
        return float(value)
    name = getattr(reward_fn, "__qualname__", None) or repr(reward_fn)
    raise TypeError(
        f"{role} {name} returned {value!r} ({type(value).__name__}) for prompt {prompt[:60]!r} and response "
        f"{response[:60]!r}; it must return a number, a bool, or None for no score"
    )


def _score_or_nan(score) -> float:
    if score is None:
        return float("nan")
    return float(score)
