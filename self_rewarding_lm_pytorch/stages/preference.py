"""What every preference stage shares: its config's base (`PreferenceStageConfig`: the pair-generation and the DPO
fields as flat keyword arguments, and `pair_settings`, the fields that make its pairs), its run, and the construction
checks of its prompts and pair filters. A run:
    1) make the stage's pairs (pairs/loop.py), resuming what its pairs folder holds,
    2) free the generation backend, then train DPO on the stored pairs (its steps resumable under `<stage>.steps`),
    3) return the last logged loss numbers, the number of pairs and the pair counts the summary keeps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from self_rewarding_lm_pytorch.data.config_types import check_field_types
from self_rewarding_lm_pytorch.data.datasets import as_token_tensor, check_non_empty
from self_rewarding_lm_pytorch.data.fields import prompt_type_error
from self_rewarding_lm_pytorch.judging.judge_prompt import RewardConfig
from self_rewarding_lm_pytorch.judging.judges import Judge
from self_rewarding_lm_pytorch.models.decoders import absolute_position_limit
from self_rewarding_lm_pytorch.pairs.config import PairGenerationConfig
from self_rewarding_lm_pytorch.pairs.loop import generate_preference_pairs
from self_rewarding_lm_pytorch.pairs.selection import JudgementsAgree, MarginAtLeast
from self_rewarding_lm_pytorch.pairs.stats import PairGenerationStats
from self_rewarding_lm_pytorch.stages.kind import PlanInputs, StageContext
from self_rewarding_lm_pytorch.storage.code_digest import is_user_code
from self_rewarding_lm_pytorch.storage.pair_store import DPODataset
from self_rewarding_lm_pytorch.storage.probes import Probe
from self_rewarding_lm_pytorch.storage.tracking import last_logged
from self_rewarding_lm_pytorch.training.dpo import DPOConfig, DPOTrainer


@dataclass(kw_only=True)
class PreferenceStageConfig(PairGenerationConfig, DPOConfig):
    """What every preference stage has: the prompts it answers (`prompt_dataset`), how it makes pairs from the
    answers (`PairGenerationConfig`'s fields) and how it trains on them (`DPOConfig`'s fields). Each stage kind
    subclasses it and runs `check_preference_stage()` first in its own `__post_init__`."""

    prompt_dataset: Dataset

    def __post_init__(self):
        self.check_preference_stage()

    def check_preference_stage(self):
        """Both groups' checks, and what a stage that makes its own pairs adds to them."""
        name = type(self).__name__
        check_field_types(self)  # every field of the stage's kind, before any check compares one
        check_non_empty(self.prompt_dataset, f"{name}.prompt_dataset")
        self.check_pair_generation()
        self.check_dpo_training()
        if self.temperature == 0:
            raise ValueError(
                f"{name}.temperature is 0 (greedy): the {self.num_candidate_responses} candidates of a prompt would all be "
                f"the same text, and a pair of the same text is dropped, so the stage would make no pair. Sample with a "
                f"temperature > 0 (the paper uses 0.7)"
            )
        if self.precompute_reference is not None:
            raise ValueError(
                f"{name}.precompute_reference does not apply: pair generation stores the reference log-probs with the "
                f"pairs; leave it at None"
            )
        if self.valid_every is not None:
            raise ValueError(
                f"{name}.valid_every has nothing to validate on: a preference stage makes its own pairs. Judge held-out "
                f"performance with an early_stopper, or the trainer's evaluate hook"
            )


# DPO's training settings: they change how a stage trains on its pairs, not the pairs. logp_reduction is not one of
# them, since the pairs store reference log-probs reduced by it.
_DPO_TRAINING_ONLY = frozenset(f.name for f in fields(DPOConfig)) - {"logp_reduction"}


def pair_settings(config: PreferenceStageConfig) -> dict[str, object]:
    """The fields of a preference stage config that make its pairs, by name: every field except DPO's training-only
    ones (the loop, the optimiser, the loss, early stopping; `logp_reduction` is kept: the stored reference log-probs
    use it). Two stages with equal pair settings, run from the same weights, seed and judge, make the same pairs."""
    if not isinstance(config, PreferenceStageConfig):
        raise TypeError(f"pair_settings takes a preference stage config (e.g. SelfRewardDPOConfig), got a "
                        f"{type(config).__name__}, which makes no pairs")
    return {f.name: getattr(config, f.name) for f in fields(config) if f.name not in _DPO_TRAINING_ONLY}


# the pair counts a stage's summary keeps (every count goes to the trackers as pairs/...)
SUMMARY_COUNTS = ("judge_verifier", "pairs_chosen", "pairs_filtered")


def run_judged_stage(config, context: StageContext, judge: Judge) -> dict:
    """A preference stage whose pairs are best vs worst of candidates scored by `judge`."""
    stats = generate_preference_pairs(
        context.model, config.prompt_dataset, judge, config,
        folder=context.path("pairs"), tokenizer_encode=context.encode, tokenizer_decode=context.decode,
        accelerator=context.accelerator, pad_id=context.pad_id, eos_id=context.eos_id,
        logp_reduction=config.logp_reduction, seed=context.seed, fingerprint=pairs_fingerprint(config, context),
        logger=context.logger, sampler=context.sampler,
    )
    summary = train_on_pairs(config, context)
    summary.update(pair_summary(stats))
    return summary


def pairs_fingerprint(config: PreferenceStageConfig, context: StageContext) -> dict[str, str]:
    """The parts of the stage's fingerprint that make its pairs: all but its DPO training settings, so a pair folder
    stays usable when only those change (a folder of other pairs is refused). The salt and the probes stay."""
    training_only = {f.name for f in fields(config)} - pair_settings(config).keys() - {"fingerprint_salt"}
    return {name: part for name, part in context.fingerprint.items() if name not in training_only}


# what a probe (storage/probes.py) answers each probe prompt with: nothing, a number, digits, a sentence (and the
# prompt itself); the ratings a reward check is probed with
PROBE_RESPONSES = ("", "42", " 1 2 3", "The answer is 42.")
PROBE_RATINGS = (0.0, 1.0, -1.0, 2.5, 10.0, math.nan, math.inf)


def probe_prompts(config) -> list[str]:
    """The stage's first and middle prompts (its one prompt, if it has one)."""
    return [config.prompt_dataset[i] for i in sorted({0, len(config.prompt_dataset) // 2})]


def probe_answers(config) -> list[tuple[str, str]]:
    """(prompt, response) inputs: each probe prompt with each of `PROBE_RESPONSES` and with itself."""
    return [(prompt, response) for prompt in probe_prompts(config) for response in (*PROBE_RESPONSES, prompt)]


def user_probe(name: str, fn, inputs) -> list[Probe]:
    """A probe of `fn` when it is the user's code (storage/code_digest.py); the library's own are its version's."""
    return [Probe(name, fn, tuple(inputs))] if fn is not None and is_user_code(fn) else []


def pair_probes(config, inputs: PlanInputs) -> list[Probe]:
    """The user callables of every preference stage: the reward checks, the pair picker, the pair filters and the
    verifier, each on inputs of its own signature."""
    nan = math.nan
    judgements = [(torch.tensor([5.0, 4.0, 5.0]), torch.tensor([1.0, 2.0, 1.0])), (torch.tensor([3.0]), torch.tensor([3.0])),
                  (torch.tensor([5.0, nan]), torch.tensor([1.0, 4.0]))]
    probes = [*user_probe("is_valid_reward", config.is_valid_reward, [(r,) for r in PROBE_RATINGS]),
              *user_probe("is_valid_reward_pair", config.is_valid_reward_pair,
                          [(1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (5.0, -5.0), (nan, 1.0)]),
              *user_probe("pick_paired_rewards", config.pick_paired_rewards,
                          [(torch.tensor([[0.0, 1.0, 2.0, 3.0], [3.0, nan, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0]]),)]),
              *user_probe("verifier", config.verifier, probe_answers(config))]
    for i, pair_filter in enumerate(config.pair_filters):
        probes += user_probe(f"pair_filters[{i}]", pair_filter, judgements)
    return probes


def pair_summary(stats: PairGenerationStats) -> dict:
    summary = dict(judge_parse_rate=stats.parse_rate, tie_rate=stats.tie_rate)
    summary.update({k: v for k, v in stats.summary().items() if k.startswith(SUMMARY_COUNTS)})
    return summary


def train_on_pairs(config, context: StageContext) -> dict:
    """DPO on the stage's stored pairs; the generation backend may free its memory first (generation is over
    until the next generating stage)."""
    context.sampler.release()
    pairs = DPODataset(context.path("pairs"))
    history = DPOTrainer(
        context.model, pairs, config, accelerator=context.accelerator, checkpoint_folder=context.path("steps"),
        checkpoint_prefix="dpo", logger=context.logger,
    ).train()
    return dict(last_logged(history, ("loss", "rewards/accuracies", "rewards/margins")), pairs=len(pairs))


def model_length_limit(model: nn.Module) -> int | None:
    """The longest sequence the model takes: learned absolute positions, else its declared `max_seq_len`."""
    return absolute_position_limit(model) or getattr(model, "max_seq_len", None)


def check_prompts(stage: str, config, inputs: PlanInputs) -> dict[int, Tensor]:
    """Every prompt is a string whose tokens leave room for an answer; returns {prompt index: token ids}."""
    max_seq_len = config.max_seq_len or getattr(inputs.model, "max_seq_len", None)
    if max_seq_len is None:
        raise ValueError(f"{stage}.max_seq_len is None and the model has no max_seq_len: set max_seq_len in the config")
    prompt_ids = {}
    for i in range(len(config.prompt_dataset)):
        prompt = config.prompt_dataset[i]
        if not isinstance(prompt, str):
            raise prompt_type_error(prompt, f"{stage}.prompt_dataset[{i}]")
        ids = as_token_tensor(inputs.encode(prompt), f"{stage}: tokenizer_encode(prompt_dataset[{i}])")
        if len(ids) >= max_seq_len:
            raise ValueError(
                f"{stage}.prompt_dataset[{i}] ({prompt[:40]!r}...) is {len(ids)} tokens, leaving no room for an answer "
                f"under max_seq_len={max_seq_len}: shorten or drop the prompt, or raise max_seq_len"
            )
        prompt_ids[i] = ids
    return prompt_ids


def judge_prompt_length(config, inputs: PlanInputs, prompt_ids: dict[int, Tensor], render, what: str
                        ) -> tuple[int, int, int] | None:
    """(the model's length limit, the longest prompt's index, the tokens of `render(that prompt)` encoded with the
    judge's tokenizer), for the checks that a judge's prompt fits the model; None when the model has no limit."""
    limit = model_length_limit(inputs.model)
    if limit is None:
        return None
    longest = max(prompt_ids, key=lambda i: len(prompt_ids[i]))
    rendered = render(config.prompt_dataset[longest])
    return limit, longest, len(as_token_tensor(inputs.judge_encode(rendered), what))


def check_pair_filters(stage: str, config, *, judgements: int, one_judgement_fix: str,
                       scale: str | None = None, width: float | None = None):
    """Filters that would keep every pair or drop every pair with this stage's judge: `judgements` per
    candidate, scores on `scale` that never differ by more than `width` (None: unbounded)."""
    for i, pair_filter in enumerate(config.pair_filters):
        where = f"{stage}.pair_filters[{i}]"
        if isinstance(pair_filter, JudgementsAgree) and judgements < 2:
            raise ValueError(
                f"{where} (JudgementsAgree) compares the judgements of a pair's two candidates, but there is one "
                f"judgement per candidate: the best-vs-worst pair always agrees, so it keeps every pair. Fix: "
                f"{one_judgement_fix}"
            )
        if isinstance(pair_filter, MarginAtLeast) and width is not None and pair_filter.margin > width + 1e-6:
            raise ValueError(
                f"{where} ({pair_filter!r}) asks for a margin of {pair_filter.margin}, but the stage's {scale} never "
                f"differ by more than {width:g}: it would drop every pair. Lower the margin"
            )


def score_scale(reward_config: RewardConfig | None) -> dict:
    """`check_pair_filters`' scale of a judge that scores on `reward_config.score_range` (none: unbounded)."""
    if reward_config is None or reward_config.score_range is None:
        return {}
    low, high = reward_config.score_range
    return dict(scale=f"scores on the judge's score_range {tuple(reward_config.score_range)}", width=high - low)
