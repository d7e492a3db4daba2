"""The Meta-Rewarding stage (Wu et al. 2024, arXiv 2407.19594): a self-reward iteration whose judge learns too.
The model answers, judges, and as meta-judge compares its judgements; actor pairs and judge pairs train together
in one DPO run (pairs/meta_reward.py makes both)."""

from __future__ import annotations

from dataclasses import dataclass

from self_rewarding_lm_pytorch.generation.sampling import check_sampling_settings
from self_rewarding_lm_pytorch.judging.meta_judge import MetaJudge, MetaJudgeConfig
from self_rewarding_lm_pytorch.models.sharding import is_fully_sharded
from self_rewarding_lm_pytorch.pairs.meta_reward import generate_meta_reward_pairs
from self_rewarding_lm_pytorch.pairs.selection import best_and_worst
from self_rewarding_lm_pytorch.stages.kind import PlanInputs, StageContext, StageKind
from self_rewarding_lm_pytorch.stages.preference import (
    check_pair_filters,
    check_prompts,
    judge_prompt_length,
    pair_summary,
    pairs_fingerprint,
    score_scale,
    train_on_pairs,
    user_probe,
)
from self_rewarding_lm_pytorch.stages.self_reward import (
    SelfRewardDPOConfig,
    check_judge_prompt_fits,
    self_judge,
    self_reward_probes,
)
from self_rewarding_lm_pytorch.storage.probes import Probe


@dataclass(kw_only=True)
class MetaRewardDPOConfig(SelfRewardDPOConfig):
    """A Meta-Rewarding iteration (Wu et al. 2024, arXiv 2407.19594): a self-rewarding iteration whose judge learns
    too. The model answers (N candidates), judges each answer `num_judgements` times, and, as meta-judge, compares
    the judgements of the answer they disagree on most, every pair in both orders (`meta_judge_config`; None: the
    paper's prompt). Judge pairs: the best vs the worst judgement by Elo rating (fitted to the position-weighted
    verdicts, pairs/meta_rules.py), dropped when both give the same score or their ratings (log-odds units) differ by
    less than `min_meta_margin`. Actor pairs as in `SelfRewardDPOConfig`; with `length_control` rho in [0, 1), the
    shortest candidate scored within rho x (best - worst) of the best is chosen (the paper's length control; None:
    best vs worst). Up to `num_preference_pairs` actor pairs and `num_judge_pairs` judge pairs (None: as many as
    actor pairs) train together in one DPO run."""

    meta_judge_config: MetaJudgeConfig | None = None
    num_judge_pairs: int | None = None
    meta_judge_max_new_tokens: int = 256
    meta_judge_temperature: float = 0.0  # one verdict per order; greedy unless asked otherwise
    meta_judge_top_p: float | None = None
    meta_judge_batch_size: int = 16
    min_meta_margin: float | None = None
    length_control: float | None = None

    def __post_init__(self):
        self.check_preference_stage()
        self.check_self_judge()
        name = type(self).__name__
        if self.meta_judge_config is None:
            self.meta_judge_config = MetaJudgeConfig()
        elif not isinstance(self.meta_judge_config, MetaJudgeConfig):
            raise TypeError(f"{name}.meta_judge_config must be a MetaJudgeConfig, got a {type(self.meta_judge_config).__name__}")
        if self.num_judgements < 2:
            raise ValueError(f"{name}.num_judgements must be >= 2: the meta-judge compares two judgements of an answer, "
                             f"got {self.num_judgements}")
        if self.num_judge_pairs is None:
            self.num_judge_pairs = self.num_preference_pairs
        for field_name in ("num_judge_pairs", "meta_judge_max_new_tokens", "meta_judge_batch_size"):
            value = getattr(self, field_name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}.{field_name} must be an int >= 1, got {value!r}")
        check_sampling_settings(self, "meta_judge_temperature", "meta_judge_top_p")
        if self.min_meta_margin is not None and not self.min_meta_margin > 0:
            raise ValueError(f"{name}.min_meta_margin must be > 0 or None, got {self.min_meta_margin}")
        if self.length_control is not None:
            if not 0 <= self.length_control < 1:
                raise ValueError(f"{name}.length_control is the paper's rho, a share of the score range in [0, 1); got "
                                 f"{self.length_control} (None turns it off: best vs worst)")
            if self.pick_paired_rewards is not best_and_worst:
                raise ValueError(f"{name}: length_control picks the actor pairs; it cannot be combined with a custom "
                                 f"pick_paired_rewards. Pass one of the two")


def run_meta_reward(config: MetaRewardDPOConfig, context: StageContext) -> dict:
    """Pairs of both kinds, then one DPO run on all of them."""
    meta_judge = MetaJudge(
        context.model, config.meta_judge_config, tokenizer_encode=context.judge_encode, tokenizer_decode=context.decode,
        max_new_tokens=config.meta_judge_max_new_tokens, temperature=config.meta_judge_temperature,
        top_p=config.meta_judge_top_p, pad_id=context.pad_id, eos_id=context.eos_id,
        batch_size=config.meta_judge_batch_size, sampler=context.sampler,
    )
    stats, meta_stats = generate_meta_reward_pairs(
        context.model, config, self_judge(config, context), meta_judge, folder=context.path("pairs"),
        tokenizer_encode=context.encode, tokenizer_decode=context.decode, judge_encode=context.judge_encode,
        accelerator=context.accelerator, pad_id=context.pad_id, eos_id=context.eos_id, seed=context.seed,
        fingerprint=pairs_fingerprint(config, context), logger=context.logger, sampler=context.sampler,
    )
    summary = train_on_pairs(config, context)
    counts = pair_summary(stats)
    summary.update(actor_pairs=stats.pairs_made, judge_pairs=meta_stats.pairs_made,
                   judge_parse_rate=counts.pop("judge_parse_rate"), tie_rate=counts.pop("tie_rate"),
                   meta_parse_rate=meta_stats.parse_rate, meta_first_position_rate=meta_stats.first_position_rate)
    summary.update(counts)
    summary.update({f"judge_pairs_dropped/{k.split('/', 1)[1]}": v for k, v in meta_stats.summary().items()
                    if k.startswith("pairs_dropped/")})
    if meta_stats.pairs_made and (meta_stats.pairs_verified_better or meta_stats.pairs_verified_worse):
        summary["judge_pairs_chosen_verified_better"] = meta_stats.pairs_verified_better / meta_stats.pairs_made
        summary["judge_pairs_chosen_verified_worse"] = meta_stats.pairs_verified_worse / meta_stats.pairs_made
    return summary


def check_meta_reward(stage: str, config: MetaRewardDPOConfig, inputs: PlanInputs):
    prompt_ids = check_prompts(stage, config, inputs)
    check_judge_prompt_fits(stage, config, inputs, prompt_ids)
    check_meta_judge_prompt_fits(stage, config, inputs, prompt_ids)
    check_pair_filters(stage, config, judgements=config.num_judgements,
                       **score_scale(config.reward_config or inputs.reward_config),
                       one_judgement_fix="raise num_judgements to 2 or more, or drop the filter")


def check_meta_judge_prompt_fits(stage: str, config: MetaRewardDPOConfig, inputs: PlanInputs, prompt_ids: dict):
    """The meta-judge prompt (encoded as the judge's) of the longest prompt with a full-length answer, two
    full-length judgements and the meta-judge's own answer budget fits the model."""
    if is_fully_sharded(inputs.model):
        raise NotImplementedError(f"{stage} does not run on a fully sharded model yet: use data "
                                  f"parallelism (one full model per process) for this stage")
    measured = judge_prompt_length(config, inputs, prompt_ids,
                                   lambda prompt: config.meta_judge_config.render(prompt, "", "", ""), "meta-judge prompt")
    if measured is None:
        return
    limit, longest, template = measured
    needed = template + config.response_max_new_tokens + 2 * config.judge_max_new_tokens + config.meta_judge_max_new_tokens
    if needed > limit:
        raise ValueError(
            f"{stage}: the meta-judge prompt rendered with its longest prompt (prompt_dataset[{longest}]) "
            f"is {template} tokens; with a {config.response_max_new_tokens}-token answer (response_max_new_tokens), two "
            f"{config.judge_max_new_tokens}-token judgements (judge_max_new_tokens) and {config.meta_judge_max_new_tokens} "
            f"tokens for the verdict (meta_judge_max_new_tokens) it needs {needed} positions, but the model's max_seq_len "
            f"is {limit}. Pass a shorter MetaJudgeConfig prompt_template as meta_judge_config, lower those budgets, or use "
            f"a model with a longer max_seq_len"
        )


# meta-judge outputs a user `parse_verdict` is probed with
PROBE_VERDICTS = ("Winner: A", "Winner: B", "[[A]]", "", "Both are fine.")


def meta_reward_probes(config: MetaRewardDPOConfig, inputs: PlanInputs) -> list[Probe]:
    """The self-reward stage's probes and a user `parse_verdict` of the meta-judge on verdicts."""
    return self_reward_probes(config, inputs) + user_probe(
        "meta_judge_config.parse_verdict", config.meta_judge_config.parse_verdict, [(text,) for text in PROBE_VERDICTS])


META_REWARD_STAGE = StageKind(name="meta-reward-dpo", config=MetaRewardDPOConfig, run=run_meta_reward,
                              check=check_meta_reward, self_judged=True, answer_budget="response_max_new_tokens",
                              probes=meta_reward_probes)
