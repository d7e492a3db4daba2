"""The meta-judge's prompt, its verdict parser and its sampler (Meta-Rewarding: Wu et al. 2024, arXiv 2407.19594).

The model, as meta-judge, reads a (prompt, response) and two of its own judgements of that response, and says
which judgement is better ("Winner: A" / "Winner: B"). `MetaJudgeConfig` renders that prompt and parses the
verdict, with the same rules as `RewardConfig`: templates are validated at construction, values are inserted
literally in one pass, a whitespace run in the verdict pattern matches any whitespace, the last match wins.
`MetaJudge` samples the verdicts in batches with the stage's sampler (generation/backend.py). What the verdicts make
(ratings of judgements, judge pairs) is pure maths in pairs/meta_rules.py.
"""

from __future__ import annotations

import math
import re
import textwrap
from dataclasses import dataclass
from typing import Callable

from accelerate.utils import extract_model_from_parallel
from torch import Tensor, nn

from self_rewarding_lm_pytorch.data.datasets import as_token_tensor
from self_rewarding_lm_pytorch.generation.backend import LibrarySampler, Sampler
from self_rewarding_lm_pytorch.generation.sampling import top_p
from self_rewarding_lm_pytorch.judging.judge_prompt import PLACEHOLDER, WHITESPACE, _literal, _placeholders
from self_rewarding_lm_pytorch.judging.judges import strip_response
from self_rewarding_lm_pytorch.models.decoders import absolute_position_limit

# the paper's meta-judge prompt (Figure 2 of Wu et al. 2024), reproduced in meaning: the judge's rubric, the
# response, two judgements, and a verdict in a fixed format
DEFAULT_META_JUDGE_PROMPT = """
Review the user's question and the corresponding response, along with two judgements. Determine which
judgement is more accurate according to the rubric provided below. The rubric used for the initial
judgement is as follows:

- Add 1 point if the response is relevant and provides some information related to the user's inquiry,
even if it is incomplete or contains some irrelevant content.
- Add another point if the response addresses a substantial portion of the user's question, but does not
completely resolve the query or provide a direct answer.
- Award a third point if the response answers the basic elements of the user's question in a useful way.
- Grant a fourth point if the response is clearly written from an AI Assistant's perspective, addressing
the user's question directly and comprehensively, and is well-organized and helpful.
- Bestow a fifth point for a response that is impeccably tailored to the user's question by an AI
Assistant, without extraneous information, reflecting expert knowledge.

User: {{ prompt }}

<response>{{ response }}</response>

<judgement A>{{ judgement_a }}</judgement A>

<judgement B>{{ judgement_b }}</judgement B>

After examining the original question, the response, and both judgements:

- Explain which judgement is more accurate according to the original rubric and why. Consider adherence to
the rubric, accuracy in evaluating the response, and consistency in applying the criteria.
- Conclude with a clear statement of which judgement is better using the format: "Winner: [Judgement A | Judgement B]"
"""

DEFAULT_VERDICT_REGEX_TEMPLATE = "Winner: {{ winner }}"
PROMPT_FIELDS = ("prompt", "response", "judgement_a", "judgement_b")
# the winner: "A", "[A]", "[[A]]", "Judgement A", "judgment A", "Judge A"-style spellings; never the A of "Alice"
WINNER = r"\[*+ ?(?i:judge?(?:ment)?[ ._]?)?+([AB])\]*+(?![A-Za-z0-9])"
A, B = 0, 1  # verdicts: the judgement shown first won, or the one shown second


@dataclass
class MetaJudgeConfig:
    """The meta-judge prompt and how to read its verdict.

    prompt_template: text with `{{ prompt }}`, `{{ response }}`, `{{ judgement_a }}` and `{{ judgement_b }}`
        (default: the paper's meta-judge prompt).
    verdict_regex_template: text with `{{ winner }}` where "A" or "B" stands (default "Winner: {{ winner }}";
        "Judgement A", "[A]", "[[B]]" are read too); or pass `parse_verdict(text) -> 0 (A) | 1 (B) | None` instead.
    auto_dedent: dedent and strip the templates, so indented triple-quoted strings work as written.
    """

    prompt_template: str = DEFAULT_META_JUDGE_PROMPT
    verdict_regex_template: str | None = None
    parse_verdict: Callable[[str], int | None] | None = None
    auto_dedent: bool = True

    def __post_init__(self):
        if self.auto_dedent:
            self.prompt_template = textwrap.dedent(self.prompt_template).strip()
        names = _placeholders(self.prompt_template)
        missing = [name for name in PROMPT_FIELDS if name not in names]
        unknown = sorted(set(names) - set(PROMPT_FIELDS))
        if missing or unknown:
            raise ValueError(
                f"MetaJudgeConfig.prompt_template must hold {{{{ prompt }}}}, {{{{ response }}}}, {{{{ judgement_a }}}} "
                f"and {{{{ judgement_b }}}} and no other placeholder; missing: {missing}, unknown: {unknown}"
            )
        if self.verdict_regex_template is not None and self.parse_verdict is not None:
            raise ValueError("MetaJudgeConfig takes verdict_regex_template or parse_verdict, not both")
        if self.parse_verdict is None:
            template = self.verdict_regex_template or DEFAULT_VERDICT_REGEX_TEMPLATE
            self.verdict_regex_template = textwrap.dedent(template).strip() if self.auto_dedent else template
            if _placeholders(self.verdict_regex_template) != ["winner"]:
                raise ValueError(
                    f"MetaJudgeConfig.verdict_regex_template must hold {{{{ winner }}}} exactly once and no other "
                    f"placeholder, got {_placeholders(self.verdict_regex_template) or 'none'} in {self.verdict_regex_template!r}"
                )
            before, _, after = PLACEHOLDER.split(self.verdict_regex_template)
            self._pattern = re.compile(_literal(before) + WINNER + _literal(after))
        elif not callable(self.parse_verdict):
            raise TypeError("MetaJudgeConfig.parse_verdict must be a callable str -> 0 (A) | 1 (B) | None")

    def render(self, prompt: str, response: str, judgement_a: str, judgement_b: str) -> str:
        """The meta-judge prompt; all four values are inserted literally in one pass (text in them that looks like
        a placeholder is never expanded)."""
        values = dict(prompt=prompt, response=response, judgement_a=judgement_a, judgement_b=judgement_b)
        return PLACEHOLDER.sub(lambda match: values[match.group(1)], self.prompt_template)

    def parse(self, meta_judge_output: str) -> int | None:
        """0 when judgement A won, 1 when B won, None when the output holds no verdict (the last match counts)."""
        if self.parse_verdict is not None:
            verdict = self.parse_verdict(meta_judge_output)
            if verdict not in (A, B, None) or isinstance(verdict, bool):
                raise TypeError(
                    f"MetaJudgeConfig.parse_verdict returned {verdict!r} for {meta_judge_output[:60]!r}; it must "
                    f"return 0 (judgement A won), 1 (B won) or None (no verdict)"
                )
            return verdict
        matches = self._pattern.findall(WHITESPACE.sub(" ", meta_judge_output))
        return None if not matches else (A if matches[-1] == "A" else B)


@dataclass
class MetaQuery:
    """One meta-judge question: which of two judgements of `response` is better, `judgement_a` shown first."""

    prompt: str
    response: str
    judgement_a: str
    judgement_b: str


class MetaJudge:
    """The model as meta-judge: renders each `MetaQuery` with `config`, samples one verdict per query in batches of
    `batch_size` with `sampler` (the generation backend, generation/backend.py; default the library's `sample`), and parses
    it. Returns (verdicts, raw outputs), a verdict None where the output could not be read."""

    def __init__(
        self,
        model: nn.Module,
        config: MetaJudgeConfig,
        *,
        tokenizer_encode: Callable[[str], Tensor],
        tokenizer_decode: Callable[[Tensor], str],
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float | None = None,
        pad_id: int = -1,
        eos_id: int | None = None,
        batch_size: int = 16,
        sampler: Sampler | None = None,
    ):
        self.model, self.config = model, config
        self.sampler = sampler or LibrarySampler()
        self.encode, self.decode = tokenizer_encode, tokenizer_decode
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.pad_id, self.eos_id, self.batch_size = pad_id, eos_id, batch_size

    def __call__(self, queries: list[MetaQuery], seed: int | None = None) -> tuple[list[int | None], list[str]]:
        prompts = [
            as_token_tensor(self.encode(self.config.render(q.prompt, q.response, q.judgement_a, q.judgement_b)),
                            "encoded meta-judge prompt")
            for q in queries
        ]
        limit = absolute_position_limit(extract_model_from_parallel(self.model))
        longest = max((len(ids) for ids in prompts), default=0)
        if limit is not None and longest + self.max_new_tokens > limit:
            raise ValueError(
                f"a meta-judge prompt is {longest} tokens; with room for a {self.max_new_tokens}-token verdict it needs "
                f"{longest + self.max_new_tokens} positions, but the model has max_seq_len {limit}. Use a shorter "
                f"MetaJudgeConfig prompt_template, a smaller meta_judge_max_new_tokens or judge_max_new_tokens, or a "
                f"model with a longer max_seq_len"
            )
        outputs = []
        for start in range(0, len(prompts), self.batch_size):
            outputs += list(self.sampler(
                self.model, prompts[start : start + self.batch_size],
                temperature=self.temperature,
                filter_fn=top_p if self.top_p is not None else None,
                filter_kwargs=dict(thres=self.top_p) if self.top_p is not None else None,
                pad_id=self.pad_id, eos_id=self.eos_id, max_new_tokens=self.max_new_tokens,
                generator=None if seed is None else seed + start,
            ))
        texts = [self.decode(strip_response(row.cpu(), self.pad_id, self.eos_id)) for row in outputs]
        return [self.config.parse(text) for text in texts], texts


def position_weights(wins_first: int, wins_second: int) -> tuple[float, float]:
    """The paper's position-bias correction (Wu et al. 2024, section 2.2): a win in the position the meta-judge
    favours counts less, w_first = wins_second / total and w_second = wins_first / total. A meta-judge that always
    names the same position gets weight 0 for those wins: its verdicts carry no information. (NaN, NaN) with no win."""
    total = wins_first + wins_second
    if total == 0:
        return math.nan, math.nan
    return wins_second / total, wins_first / total
