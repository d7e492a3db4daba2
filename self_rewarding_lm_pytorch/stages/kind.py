"""What a stage kind declares, and what its runner and its checks are given.

A stage kind (one module of this folder each, listed in registry.py) declares its config class, the name its
files carry, its runner, and the checks the orchestrator runs on it when the plan is built. A runner gets a
`StageContext`: what the stage needs from the run (model, accelerator, sampler, tokenizer, ids, seed, files,
logger), never the orchestrator itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from accelerate import Accelerator
from torch import Tensor, nn

from self_rewarding_lm_pytorch.generation.backend import Sampler
from self_rewarding_lm_pytorch.judging.judge_prompt import RewardConfig
from self_rewarding_lm_pytorch.storage.probes import Probe
from self_rewarding_lm_pytorch.storage.tracking import MetricsLogger


@dataclass(frozen=True)
class PlanInputs:
    """What the construction checks test a stage's config against."""

    model: nn.Module
    encode: Callable[[str], Tensor]
    judge_encode: Callable[[str], Tensor]
    reward_config: RewardConfig  # the plan's judge prompt; a stage's own `reward_config` overrides it
    pad_id: int


@dataclass
class StageContext:
    """What a runner gets for stage `name`: its files are `folder / f"{name}.{suffix}"` (`path(suffix)`)."""

    name: str
    folder: Path
    model: nn.Module
    accelerator: Accelerator
    sampler: Sampler
    encode: Callable[[str], Tensor]
    decode: Callable[[Tensor], str]
    judge_encode: Callable[[str], Tensor]
    reward_config: RewardConfig
    pad_id: int
    eos_id: int | None
    seed: int  # the stage's own seed: its draws do not depend on earlier stages having run in this process
    fingerprint: dict[str, str]  # what identifies the stage's result (storage/fingerprint.py)
    logger: MetricsLogger

    def path(self, suffix: str) -> Path:
        return self.folder / f"{self.name}.{suffix}"


@dataclass(frozen=True)
class StageKind:
    """One kind of stage. `self_judged`: the model judges with its judge prompt, so the plan's prompt and the
    judge's tokenizer make the stage's result; `generates`: the stage samples from the model, so the generation
    backend makes its result; `answer_budget`: the config field capping a generated answer (named when eos_id is
    missing); `probes`: the user callables of a config with the inputs to call them on, whose outputs join the
    stage's fingerprint (storage/probes.py)."""

    name: str
    config: type
    run: Callable[[Any, StageContext], dict]
    check: Callable[[str, Any, PlanInputs], None] | None = None
    self_judged: bool = False
    generates: bool = True
    answer_budget: str | None = None
    probes: Callable[[Any, PlanInputs], list[Probe]] | None = None
