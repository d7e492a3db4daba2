"""Pair sum: pick two of the listed digits that add up to the target. A task where checking is easier than solving.

    prompt   "pair 3 7 1 8 5 2 = 12:"   response " 5 7" + EOS      (also right: " 3 8" or " 8 3")

Solving is a search over the pairs of the list; checking an answer is two look-ups in the list and one small sum,
so a model's judge of its own answers has a chance to be better than its answers (on `sort_digits`, checking an
answer needs the same digit counting as sorting). Every generated prompt has at least one answer; several may be
right. The answer is the pair, not its order: the checker accepts either order and `answer_key` gives the pair
sorted, so self-consistency votes count " 5 7" and " 7 5" as one answer, as the checker does. Instruction examples
answer with the valid pair of smallest first digit, in ascending order.

The public surface mirrors `sort_digits`: prompts, instruction examples, judge examples, an exact checker
`is_correct`, a graded score and `answer_key`; text is tokenised by characters (`CharTokenizer`).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from typing import Callable

from torch import Tensor

from self_rewarding_lm_pytorch.tasks.sort_digits import CharTokenizer, encode_example

MAX_SCORE = 5
PROMPT_RE = re.compile(r"pair ([1-9](?: [1-9])*) = (\d{1,2}):")


def make_prompt(digits: list[int], target: int) -> str:
    return "pair " + " ".join(map(str, digits)) + f" = {target}:"


def parse_prompt(prompt: str) -> tuple[list[int], int]:
    """The listed digits and the target."""
    match = PROMPT_RE.search(prompt)
    if match is None:
        raise ValueError(f"not a pair_sum prompt: {prompt!r}")
    return [int(d) for d in match.group(1).split()], int(match.group(2))


def valid_pairs(digits: list[int], target: int) -> list[tuple[int, int]]:
    """Every right answer, as ascending pairs of two listed positions, in ascending order."""
    pairs = {tuple(sorted((digits[i], digits[j])))
             for i in range(len(digits)) for j in range(i + 1, len(digits)) if digits[i] + digits[j] == target}
    return sorted(pairs)


def solve(digits: list[int], target: int) -> str:
    """The instruction examples' answer: the valid pair of smallest first digit, ascending."""
    pairs = valid_pairs(digits, target)
    if not pairs:
        raise ValueError(f"no two of {digits} sum to {target}")
    return " {} {}".format(*pairs[0])


def parse_response(response: str) -> tuple[int, int] | None:
    """The two digits a response gives, in its order, or None when it is not exactly two single digits."""
    tokens = response.split()
    if len(tokens) != 2 or not all(t.isdigit() and len(t) == 1 for t in tokens):
        return None
    return int(tokens[0]), int(tokens[1])


def answer_key(response: str) -> tuple[int, int] | None:
    """The answer a response gives, for self-consistency votes: its pair sorted, or None when it is not a pair."""
    pair = parse_response(response)
    return None if pair is None else tuple(sorted(pair))


def _listed(pair: tuple[int, int], digits: list[int]) -> int:
    """How many of the pair's digits the list supplies, each listed position used at most once (0, 1 or 2)."""
    available = Counter(digits)
    used = 0
    for d in pair:
        if available[d] > 0:
            available[d] -= 1
            used += 1
    return used


def is_correct(prompt: str, response: str) -> bool:
    """The exact checker: two listed digits (two positions of the list, in either order) that sum to the target."""
    digits, target = parse_prompt(prompt)
    pair = parse_response(response)
    return pair is not None and _listed(pair, digits) == 2 and sum(pair) == target


def graded_score(prompt: str, response: str) -> float:
    """0 to 5: one point per digit of the pair the list supplies, three more when the pair sums to the target
    (so a right answer scores 5, and a pair of non-listed digits with the right sum scores 3)."""
    digits, target = parse_prompt(prompt)
    pair = parse_response(response)
    if pair is None:
        return 0.0
    return float(_listed(pair, digits) + 3 * (sum(pair) == target))


class PairSumTask:
    """Seeded generators of prompts, answers and judge examples for lists of `length` distinct digits 1-9."""

    def __init__(self, length: int = 6, seed: int = 0, tokenizer: CharTokenizer | None = None):
        if not 2 <= length <= 9:
            raise ValueError(f"length must be 2 to 9 (distinct digits 1-9), got {length}")
        self.length = length
        self.rng = random.Random(seed)
        self.tokenizer = tokenizer or CharTokenizer()

    def random_problem(self) -> tuple[list[int], int]:
        """Distinct digits, and a target that two of them sum to (the pair drawn first, so one always exists)."""
        digits = self.rng.sample(range(1, 10), self.length)
        i, j = self.rng.sample(range(self.length), 2)
        return digits, digits[i] + digits[j]

    def prompts(self, n: int) -> list[str]:
        return [make_prompt(*self.random_problem()) for _ in range(n)]

    def reseed(self, seed: int) -> PairSumTask:
        """The same task drawing from another seed (e.g. a held-out split)."""
        return PairSumTask(self.length, seed, self.tokenizer)

    def _example(self, prompt: str, response: str) -> tuple[Tensor, int]:
        return encode_example(self.tokenizer, prompt, response)

    def instruction_examples(self, n: int) -> list[tuple[Tensor, int]]:
        """IFT data: (prompt + correct response + EOS, prompt_len)."""
        examples = []
        for _ in range(n):
            digits, target = self.random_problem()
            examples.append(self._example(make_prompt(digits, target), solve(digits, target)))
        return examples

    def candidate_response(self, digits: list[int], target: int) -> str:
        """A plausible answer of varied quality, for judge training: right, two listed digits with the wrong sum,
        one digit not listed, or one listed digit used twice."""
        kind = self.rng.randrange(4)
        pair = list(self.rng.choice(valid_pairs(digits, target)))
        if kind == 1:
            wrong = [(a, b) for a in digits for b in digits if a < b and a + b != target]
            pair = list(self.rng.choice(wrong)) if wrong else pair
        elif kind == 2:
            unlisted = [d for d in range(1, 10) if d not in digits]
            pair[self.rng.randrange(2)] = self.rng.choice(unlisted) if unlisted else pair[0]
        elif kind == 3:
            pair = [pair[0], pair[0]]
        return " {} {}".format(*pair)

    def judge_examples(
        self,
        n: int,
        judge_prompt: Callable[[str, str], str],
        judge_answer: Callable[[float], str] = lambda score: f"Score: {score:g}",
    ) -> list[tuple[Tensor, int]]:
        """EFT data: (judge prompt for a task prompt and a candidate + the candidate's score + EOS, prompt_len).

        `judge_prompt(prompt, response)` renders the judge prompt, e.g. `RewardConfig.render`; `judge_answer`
        formats the score the way the reward regex expects it."""
        examples = []
        for _ in range(n):
            digits, target = self.random_problem()
            prompt, response = make_prompt(digits, target), self.candidate_response(digits, target)
            examples.append(self._example(judge_prompt(prompt, response), judge_answer(graded_score(prompt, response))))
        return examples
