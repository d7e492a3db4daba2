"""The judge's prompt and its score parser (Yuan et al. 2024, section 2.2 and Figure 2).

A `RewardConfig` renders the LLM-as-a-judge prompt for a (prompt, response) pair and parses the score out of
the judge's answer. Templates hold `{{ prompt }}` and `{{ response }}`; the score pattern holds `{{ reward }}`,
which matches an integer or a decimal in ASCII digits. The rest of the pattern is literal text (regex characters in
it are escaped) with any run of whitespace matching any amount of whitespace, including none. The parser takes the last match, because judges
often restate the format ("Score: <total points>") before answering.
"""

from __future__ import annotations

import math
import numbers
import re
import textwrap
from dataclasses import dataclass
from typing import Callable

PLACEHOLDER = re.compile(r"\{\{\s*(\w*)\s*\}\}")
# ASCII digits only ("٣" is not a score); never starts inside a run of digits, and possessive quantifiers never
# backtrack into one: with whitespace runs collapsed first (see `parse`), a scan is linear in the text's length
NUMBER = r"(?<![0-9])([-+]?(?:[0-9]++(?:\.[0-9]*+)?|\.[0-9]++))"
WHITESPACE = re.compile(r"\s+")

# the paper's additive 5-point judge prompt (Figure 2), reproduced in meaning
DEFAULT_LLM_AS_JUDGE_PROMPT = """
Review the user's question and the corresponding response using the additive 5-point
scoring system described below. Points are accumulated based on the satisfaction of each
criterion:

- Add 1 point if the response is relevant and provides some information related to
the user's inquiry, even if it is incomplete or contains some irrelevant content.
- Add another point if the response addresses a substantial portion of the user's question,
but does not completely resolve the query or provide a direct answer.
- Award a third point if the response answers the basic elements of the user's question in a
useful way, regardless of whether it seems to have been written by an AI Assistant or if it
has elements typically found in blogs or search results.
- Grant a fourth point if the response is clearly written from an AI Assistant's perspective,
addressing the user's question directly and comprehensively, and is well-organized and
helpful, even if there is slight room for improvement in clarity, conciseness or focus.
- Bestow a fifth point for a response that is impeccably tailored to the user's question
by an AI Assistant, without extraneous information, reflecting expert knowledge, and
demonstrating a high-quality, engaging, and insightful answer.

User: {{ prompt }}

<response>{{ response }}</response>

After examining the user's instruction and the response:

- Briefly justify your total score, up to 100 words.
- Conclude with the score using the format: "Score: <total points>"

Remember to assess from the AI Assistant perspective, utilizing web search knowledge as
necessary. To evaluate the response in alignment with this additive scoring model, we'll
systematically attribute points based on the outlined criteria.
"""

DEFAULT_REWARD_REGEX_TEMPLATE = "Score: {{ reward }}"


def _placeholders(template: str) -> list[str]:
    return PLACEHOLDER.findall(template)


@dataclass
class RewardConfig:
    """The judge prompt and how to read a score from the judge's answer.

    prompt_template: text with `{{ prompt }}` and `{{ response }}` (default: the paper's prompt).
    reward_regex_template: text with `{{ reward }}` where the number is, e.g. "Rating: {{ reward }}"
        (default "Score: {{ reward }}"); or pass `parse_reward(text) -> float | None` instead.
    auto_dedent: dedent and strip the templates, so indented triple-quoted strings work as written.
    score_range: (low, high) the scale the prompt asks for, e.g. (0, 5); scores outside are not valid.
        None accepts any number. The default prompt's scale is (0, 5).
    """

    prompt_template: str = DEFAULT_LLM_AS_JUDGE_PROMPT
    reward_regex_template: str | None = None
    parse_reward: Callable[[str], float | None] | None = None
    auto_dedent: bool = True
    score_range: tuple[float, float] | None = None

    def __post_init__(self):
        if self.auto_dedent:
            self.prompt_template = textwrap.dedent(self.prompt_template).strip()
        names = _placeholders(self.prompt_template)
        missing = [name for name in ("prompt", "response") if name not in names]
        unknown = sorted(set(names) - {"prompt", "response"})
        if missing or unknown:
            raise ValueError(
                f"RewardConfig.prompt_template must hold {{{{ prompt }}}} and {{{{ response }}}} and no other "
                f"placeholder; missing: {missing}, unknown: {unknown}"
            )

        if self.reward_regex_template is not None and self.parse_reward is not None:
            raise ValueError("RewardConfig takes reward_regex_template or parse_reward, not both")
        if self.parse_reward is None:
            if self.reward_regex_template is None:
                self.reward_regex_template = DEFAULT_REWARD_REGEX_TEMPLATE
                if self.prompt_template == textwrap.dedent(DEFAULT_LLM_AS_JUDGE_PROMPT).strip() and self.score_range is None:
                    self.score_range = (0, 5)
            self._pattern = self._compile(self.reward_regex_template)
        elif not callable(self.parse_reward):
            raise TypeError("RewardConfig.parse_reward must be a callable str -> float | None")

        if self.score_range is not None:
            low, high = self.score_range
            if not low < high:
                raise ValueError(f"RewardConfig.score_range must be (low, high) with low < high, got {self.score_range}")

    def _compile(self, template: str) -> re.Pattern:
        if self.auto_dedent:
            template = textwrap.dedent(template).strip()
        names = _placeholders(template)
        if names != ["reward"]:
            raise ValueError(
                f"RewardConfig.reward_regex_template must hold {{{{ reward }}}} exactly once and no other placeholder, "
                f"got {names or 'none'} in {template!r}"
            )
        before, after = PLACEHOLDER.split(template)[0], PLACEHOLDER.split(template)[2]
        return re.compile(_literal(before) + NUMBER + _literal(after))

    def render(self, prompt: str, response: str) -> str:
        """The judge prompt for (prompt, response). Both are inserted literally, in one pass: text in them that
        looks like a placeholder is never expanded."""
        values = dict(prompt=prompt, response=response)
        return PLACEHOLDER.sub(lambda match: values[match.group(1)], self.prompt_template)

    def parse(self, judge_output: str) -> float | None:
        """The judge's score: the last match of the score pattern, or None when there is none (or it is not finite)."""
        if self.parse_reward is not None:
            score = self.parse_reward(judge_output)
            if score is not None and not isinstance(score, numbers.Real):
                raise TypeError(
                    f"RewardConfig.parse_reward returned {score!r} ({type(score).__name__}) for the judge output "
                    f"{judge_output[:60]!r}; it must return a number, or None for no score"
                )
            return None if score is None or not math.isfinite(score) else float(score)
        # each whitespace run becomes one space, matched by ` ?` in the pattern: the same language as `\s*`, but a
        # long run of spaces is not retried from every position (quadratic with a template like " {{ reward }}")
        matches = self._pattern.findall(WHITESPACE.sub(" ", judge_output))
        if not matches:
            return None
        score = float(matches[-1])
        return score if math.isfinite(score) else None

    def is_in_range(self, score: float) -> bool:
        if self.score_range is None:
            return True
        low, high = self.score_range
        return low <= score <= high


def _literal(text: str) -> str:
    """Regex for literal `text`, against text whose whitespace runs are single spaces: a run of whitespace in
    `text` matches one space or none."""
    return " ?".join(re.escape(part) for part in WHITESPACE.split(text))
