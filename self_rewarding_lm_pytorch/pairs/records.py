"""The records of pair generation: a preference pair on its way from a pair maker to the store, the kinds of pair a
maker makes (with where each kind's counts go), and what a maker returns for one batch of prompts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from torch import Tensor


@dataclass
class PreferencePair:
    """One preference pair. `record` is its line of the store's pairs.jsonl, written as it is; the typed fields are
    what the store's arrays and the loop's counts read."""

    chosen: Tensor  # prompt + chosen response token ids
    rejected: Tensor  # prompt + rejected response token ids
    prompt_len: int
    chosen_score: float  # the scores that picked the pair (the store's chosen_reward / rejected_reward)
    rejected_score: float
    record: dict
    kind: str = "actor"  # which `PairKind` of its maker it is
    chosen_verified: float | None = None  # the verifier's verdicts on both sides (diagnostics); None without one
    rejected_verified: float | None = None
    chosen_ref_logp: float | None = None  # log p_ref(response | prompt), filled in by the loop
    rejected_ref_logp: float | None = None


class Tally(Protocol):
    """Cumulative counts of one kind of pair (`PairGenerationStats`, `MetaJudgeStats`): a dataclass of numbers."""

    pairs_made: int
    pairs_verified_better: int
    pairs_verified_worse: int

    def add(self, other) -> None: ...

    def summary(self) -> dict: ...


@dataclass(frozen=True)
class PairKind:
    """A kind of pair a maker makes: how many the stage wants, and where its counts go."""

    name: str  # PreferencePair.kind
    target: int  # pairs wanted
    tally: type  # the `Tally` class of its counts
    progress_key: str  # the counts' key in the store's committed progress
    metrics_prefix: str  # the counts' prefix in the trackers, e.g. "pairs" -> "pairs/parse_rate"


@dataclass
class MadeBatch:
    """What a maker made from one batch of prompts on one process."""

    pairs: list[PreferencePair]  # in prompt order
    counts: dict[str, Any]  # per kind name: the batch's `Tally`
    examples: dict[str, list[str]] = field(default_factory=dict)  # per kind name: unreadable judge outputs, to show


def as_columns(pairs: list[PreferencePair]) -> dict[str, list]:
    """The pairs as the store's columns (`PreferenceDataWriter.append`'s arguments)."""
    return dict(
        chosen=[p.chosen for p in pairs], rejected=[p.rejected for p in pairs], prompt_len=[p.prompt_len for p in pairs],
        chosen_reward=[p.chosen_score for p in pairs], rejected_reward=[p.rejected_score for p in pairs],
        chosen_ref_logp=[p.chosen_ref_logp for p in pairs], rejected_ref_logp=[p.rejected_ref_logp for p in pairs],
        records=[p.record for p in pairs],
    )
