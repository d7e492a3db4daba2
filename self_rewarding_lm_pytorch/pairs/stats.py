"""What pair generation counts, and the error that explains a shortfall with those counts and the likely fix."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING

from torch import Tensor

if TYPE_CHECKING:  # annotations only
    from self_rewarding_lm_pytorch.judging.judges import Judge
    from self_rewarding_lm_pytorch.pairs.config import PairGenerationConfig


@dataclass
class PairGenerationStats:
    """Counts over every prompt tried (cumulative across resumed runs)."""

    prompts_tried: int = 0
    candidates: int = 0
    judgements: int = 0
    judgements_parsed: int = 0  # the judge produced a number
    judgements_valid: int = 0  # ... that `is_valid_reward` accepted
    prompts_scored: int = 0  # prompts with at least two scored candidates
    prompts_tied: int = 0  # ... whose candidates all scored the same: no pair (paper)
    pairs_rejected: int = 0  # pairs that `is_valid_reward_pair` refused
    pairs_identical: int = 0  # pairs dropped because chosen and rejected are the same text
    pairs_filtered: dict[str, int] = field(default_factory=dict)  # pairs dropped, by the name of the pair filter
    pairs_made: int = 0
    verifier_comparisons: int = 0  # candidate pairs the verifier ranks differently
    verifier_agreements: int = 0  # ... that the judge ranks the same way (strictly)
    pairs_verified_better: int = 0  # chosen strictly better than rejected by the verifier
    pairs_verified_worse: int = 0

    @property
    def parse_rate(self) -> float:
        return self.judgements_parsed / max(self.judgements, 1)

    @property
    def tie_rate(self) -> float:
        return self.prompts_tied / max(self.prompts_scored, 1)

    def add(self, other: PairGenerationStats):
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if isinstance(mine, dict):
                setattr(self, f.name, {k: mine.get(k, 0) + theirs.get(k, 0) for k in {**mine, **theirs}})
            else:
                setattr(self, f.name, mine + theirs)

    def summary(self) -> dict:
        row = asdict(self)
        row.update({f"pairs_filtered/{name}": count for name, count in row.pop("pairs_filtered").items()})
        row.update(parse_rate=self.parse_rate, tie_rate=self.tie_rate)
        if self.verifier_comparisons:
            row["judge_verifier_agreement"] = self.verifier_agreements / self.verifier_comparisons
        if self.pairs_made and (self.pairs_verified_better or self.pairs_verified_worse):
            row["pairs_chosen_verified_better"] = self.pairs_verified_better / self.pairs_made
            row["pairs_chosen_verified_worse"] = self.pairs_verified_worse / self.pairs_made
        return row


class PairGenerationError(RuntimeError):
    """Fewer pairs than requested after the prompt budget; `stats` holds the counts."""

    def __init__(self, message: str, stats: PairGenerationStats, num_pairs: int):
        super().__init__(message)
        self.stats = stats
        self.num_pairs = num_pairs


def count_verifier_agreement(stats: PairGenerationStats, scores: Tensor, verified: Tensor):
    """Over candidate pairs the verifier ranks differently: does the judge rank them the same way?"""
    scored = ~scores.isnan()
    for a in range(len(scores)):
        for b in range(a + 1, len(scores)):
            if verified[a] == verified[b]:
                continue
            stats.verifier_comparisons += 1
            if scored[a] and scored[b] and (scores[a] - scores[b]) * (verified[a] - verified[b]) > 0:
                stats.verifier_agreements += 1


def shortfall_message(
    stats: PairGenerationStats,
    num_pairs: int,
    config: PairGenerationConfig,
    judge: Judge,
    cursor: int,
    budget: int,
    example_outputs: list[str],
) -> str:
    counts = (
        f"made {num_pairs} of {config.num_preference_pairs} preference pairs after trying {stats.prompts_tried} prompts "
        f"(budget {budget}): {stats.judgements} judgements, {stats.judgements_parsed} parsed, "
        f"{stats.judgements_valid} valid, {stats.prompts_tied} prompts tied, {stats.pairs_rejected} pairs refused by "
        f"is_valid_reward_pair, {sum(stats.pairs_filtered.values())} dropped by pair filters{' ' + str(stats.pairs_filtered) if stats.pairs_filtered else ''}, "
        f"{stats.pairs_identical} pairs dropped as identical texts."
    )
    self_judge = getattr(judge, "reward_config", None)
    if stats.judgements_parsed == 0:
        if self_judge is not None:
            shown = "; ".join(repr(text[:80]) for text in example_outputs[:2]) or "(none)"
            cause = (
                f"The judge never produced a score its RewardConfig can parse (e.g. 'Score: <n>'); its outputs look like: "
                f"{shown}. Fine-tune the model on judge-format examples first (the paper's EFT data, e.g. an SFT stage "
                f"with SortDigitsTask.judge_examples), or pass a RewardConfig whose reward_regex_template matches its output."
            )
        else:
            cause = "The reward function or model returned no score for any candidate: check it returns numbers."
    elif stats.judgements_valid == 0:
        cause = (
            "Every parsed score was refused, by is_valid_reward or by the RewardConfig's score_range: check both match "
            "the scale the judge answers on."
        )
    elif stats.prompts_tied > stats.prompts_scored / 2:
        cause = (
            "Most prompts' candidates scored equal (ties give no pair, as in the paper): raise num_candidate_responses, "
            "num_judgements or the sampling temperature, or use a finer score scale."
        )
    elif stats.pairs_identical > num_pairs:
        cause = (
            "Most pairs' chosen and rejected answers were the same text (such a pair teaches nothing and is dropped): "
            "the model answers each prompt the same way; raise the sampling temperature or num_candidate_responses."
        )
    else:
        cause = "The prompts ran out first: add prompts, raise max_prompts, or lower num_preference_pairs."
    if num_pairs == 0:
        # accept_fewer_pairs cannot help: a DPO stage needs at least one pair
        return f"{counts} {cause} No pair was made, so the stage has nothing to train on."
    return f"{counts} {cause} To keep the pairs made so far instead, pass accept_fewer_pairs=True."
