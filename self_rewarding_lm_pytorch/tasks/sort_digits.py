"""Sorting a short list of digits: a verifiable task small enough to run the whole self-rewarding loop on a CPU.

    prompt   "sort 3 1 2 4:"          response " 1 2 3 4" + EOS

Everything the paper's pipeline needs is here, generated from a seed, with no download:
- instruction examples (the paper's IFT seed data),
- judge-format examples (the paper's EFT data: a judge prompt holding a task prompt and a candidate response,
  answered with the candidate's score),
- fresh prompts for the self-reward stages,
- an exact checker and a graded score, usable as an external reward or as a verifier of the judge.

Text is tokenised by characters (`CharTokenizer`): token id = code point, 0 is EOS, -1 is padding.
"""

from __future__ import annotations

import random
import re
from typing import Callable

import torch
from torch import Tensor

MAX_SCORE = 5
PROMPT_RE = re.compile(r"sort ([1-9](?: [1-9])*):")


class CharTokenizer:
    """Characters as tokens: ids are code points below 128, 0 is end-of-sequence, -1 is padding."""

    num_tokens = 128
    eos_id = 0
    pad_id = -1

    def encode(self, text: str) -> Tensor:
        ids = [ord(char) for char in text]
        if any(not 0 < i < self.num_tokens for i in ids):
            raise ValueError(f"CharTokenizer handles ASCII text only, got {text!r}")
        return torch.tensor(ids, dtype=torch.long)

    def decode(self, ids: Tensor) -> str:
        """Text up to the first EOS, padding dropped."""
        chars = []
        for i in torch.as_tensor(ids).tolist():
            if i == self.eos_id:
                break
            if 0 < i < self.num_tokens:
                chars.append(chr(i))
        return "".join(chars)


def encode_example(tokenizer: CharTokenizer, prompt: str, response: str) -> tuple[Tensor, int]:
    """An SFT item of the bundled tasks: (prompt + response + EOS token ids, prompt length)."""
    prompt_ids = tokenizer.encode(prompt)
    response_ids = torch.cat([tokenizer.encode(response), torch.tensor([tokenizer.eos_id])])
    return torch.cat([prompt_ids, response_ids]), len(prompt_ids)


def make_prompt(digits: list[int]) -> str:
    return "sort " + " ".join(map(str, digits)) + ":"


def solve(digits: list[int]) -> str:
    return " " + " ".join(map(str, sorted(digits)))


def parse_prompt(prompt: str) -> list[int]:
    match = PROMPT_RE.search(prompt)
    if match is None:
        raise ValueError(f"not a sort_digits prompt: {prompt!r}")
    return [int(d) for d in match.group(1).split()]


def parse_response(response: str) -> list[int] | None:
    tokens = response.split()
    if not tokens or not all(t.isdigit() and len(t) == 1 for t in tokens):
        return None
    return [int(t) for t in tokens]


def answer_key(response: str) -> tuple[int, ...] | None:
    """The answer a response gives, for self-consistency votes: its digits, or None when it is not a digit list."""
    answer = parse_response(response)
    return None if answer is None else tuple(answer)


def is_correct(prompt: str, response: str) -> bool:
    """The exact checker: the response is the prompt's digits in ascending order."""
    return parse_response(response) == sorted(parse_prompt(prompt))


def graded_score(prompt: str, response: str) -> float:
    """0 to 5: one point for using exactly the prompt's digits, plus one per position that matches the sorted
    answer, scaled so a correct answer of any length scores 5."""
    digits = parse_prompt(prompt)
    answer = parse_response(response)
    if answer is None:
        return 0.0
    target = sorted(digits)
    is_permutation = sorted(answer) == target
    matches = sum(a == t for a, t in zip(answer, target)) if len(answer) == len(target) else 0
    return round(MAX_SCORE * (is_permutation + matches) / (1 + len(target)), 2)


class SortDigitsTask:
    """Seeded generators of prompts, answers and judge examples for lists of `length` digits."""

    def __init__(self, length: int = 4, seed: int = 0, tokenizer: CharTokenizer | None = None):
        self.length = length
        self.rng = random.Random(seed)
        self.tokenizer = tokenizer or CharTokenizer()

    def random_digits(self) -> list[int]:
        return [self.rng.randint(1, 9) for _ in range(self.length)]

    def prompts(self, n: int) -> list[str]:
        return [make_prompt(self.random_digits()) for _ in range(n)]

    def reseed(self, seed: int) -> SortDigitsTask:
        """The same task drawing from another seed (e.g. a held-out split)."""
        return SortDigitsTask(self.length, seed, self.tokenizer)

    def _example(self, prompt: str, response: str) -> tuple[Tensor, int]:
        return encode_example(self.tokenizer, prompt, response)

    def instruction_examples(self, n: int) -> list[tuple[Tensor, int]]:
        """IFT data: (prompt + correct response + EOS, prompt_len)."""
        examples = []
        for _ in range(n):
            digits = self.random_digits()
            examples.append(self._example(make_prompt(digits), solve(digits)))
        return examples

    def candidate_response(self, digits: list[int]) -> str:
        """A plausible answer of varied quality, for judge training: correct, unsorted, nearly sorted or wrong digits."""
        kind = self.rng.randrange(4)
        answer = sorted(digits)
        if kind == 1:
            answer = digits[:]
            self.rng.shuffle(answer)
        elif kind == 2 and len(answer) > 1:
            i = self.rng.randrange(len(answer) - 1)
            answer[i], answer[i + 1] = answer[i + 1], answer[i]
        elif kind == 3:
            answer[self.rng.randrange(len(answer))] = self.rng.randint(1, 9)
        return " " + " ".join(map(str, answer))

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
            digits = self.random_digits()
            prompt, response = make_prompt(digits), self.candidate_response(digits)
            examples.append(self._example(judge_prompt(prompt, response), judge_answer(graded_score(prompt, response))))
        return examples
