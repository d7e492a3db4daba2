"""The judged-candidates pair maker: the paper's self-instruction creation (Yuan et al. 2024, section 2.2) for one
batch of prompts, whoever judges (the model itself, a reward function or model, self-consistency votes).

  1) sample N candidate responses per prompt in one batched sampler call,
  2) judge every candidate (K judgements each for the model's own judge) in one batched call,
  3) keep each judgement's score when it is on the judge's scale and `is_valid_reward` accepts it, and average each
     candidate's valid scores,
  4) pick a (chosen, rejected) pair per prompt (best vs worst by default; equal scores give no pair, as in the paper),
     then drop it when `is_valid_reward_pair` refuses it, when both texts are the same, or when a pair filter does,
  5) count everything per prompt (parsed, valid, tied, dropped by which rule, the verifier's agreement).
The loop (pairs/loop.py) runs it batch after batch and fills in the kept pairs' reference log-probs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from self_rewarding_lm_pytorch.data.datasets import as_token_tensor
from self_rewarding_lm_pytorch.data.fields import prompt_type_error
from self_rewarding_lm_pytorch.generation.backend import Sampler
from self_rewarding_lm_pytorch.generation.sampling import top_p
from self_rewarding_lm_pytorch.judging.judges import Candidates, Judge, Judgements, check_reward_value, strip_response
from self_rewarding_lm_pytorch.models.sharding import is_fully_sharded
from self_rewarding_lm_pytorch.pairs.config import PairGenerationConfig
from self_rewarding_lm_pytorch.pairs.records import MadeBatch, PairKind, PreferencePair
from self_rewarding_lm_pytorch.pairs.selection import first_failed_filter
from self_rewarding_lm_pytorch.pairs.stats import (
    PairGenerationError,
    PairGenerationStats,
    count_verifier_agreement,
    shortfall_message,
)


@dataclass
class JudgedBatch:
    """One batch's candidates and their judgements, prompt-major (rows [i * n, (i + 1) * n) answer prompt i), for
    a maker that does more with them than pick the actor's pairs (Meta-Rewarding's meta-judge, pairs/meta_reward.py)."""

    prompts: list[str]
    prompt_ids: list[Tensor]  # one per prompt
    texts: list[str]
    response_ids: list[Tensor]
    judgements: Judgements
    valid_scores: Tensor  # (rows, K): the judge's scores, NaN where it gave none or an invalid one


class JudgedCandidatesMaker:
    """Makes one batch's pairs from judged candidates (steps 1-5 above); one kind of pair, "actor", counted in
    `PairGenerationStats`. `sampler` makes the candidates (generation/backend.py). `pick_pairs(mean_scores,
    response_lengths)` (both (prompts, n)) replaces `config.pick_paired_rewards`. `record_kind`: written first in
    each record as its `kind`, for a store that holds several kinds of pair."""

    name = "pair generation"
    description = "pairs"
    unusable = "no usable judgement"

    def __init__(self, model: nn.Module, judge: Judge, config: PairGenerationConfig, *, encode, decode, pad_id: int,
                 eos_id: int | None, max_seq_len: int, sampler: Sampler,
                 pick_pairs: Callable[[Tensor, Tensor], Tensor] | None = None, record_kind: str | None = None):
        self.model, self.judge, self.config, self.sampler = model, judge, config, sampler
        self.encode, self.decode, self.pad_id, self.eos_id, self.max_seq_len = encode, decode, pad_id, eos_id, max_seq_len
        self.pick_pairs, self.record_kind = pick_pairs, record_kind
        self.kinds = (PairKind("actor", config.num_preference_pairs, PairGenerationStats, "stats", "pairs"),)

    def __call__(self, prompts: list[str], prompt_indices: list[int], seed: int) -> MadeBatch:
        return self.pairs_of(self.judge_candidates(prompts, seed), prompt_indices)

    @torch.no_grad()
    def judge_candidates(self, prompts: list[str], seed: int) -> JudgedBatch | None:
        """Steps 1-3; None for no prompts (a sharded model's rank with none left still samples and judges nothing,
        running the forwards that the other ranks' calls need)."""
        if not prompts and not is_fully_sharded(self.model):
            return None
        config, pad_id, eos_id = self.config, self.pad_id, self.eos_id
        for prompt in prompts:
            if not isinstance(prompt, str):
                raise prompt_type_error(prompt, "an item of the prompt dataset")
        prompt_ids = [as_token_tensor(self.encode(p), "encoded prompt") for p in prompts]
        for prompt, ids in zip(prompts, prompt_ids):
            if len(ids) >= self.max_seq_len:
                raise ValueError(
                    f"prompt {prompt[:60]!r} is {len(ids)} tokens, leaving no room for a response under "
                    f"max_seq_len={self.max_seq_len}: shorten the prompt or raise max_seq_len"
                )

        # 1) N candidates per prompt in one call; rows are prompt-major
        n = config.num_candidate_responses
        responses = self.sampler(
            self.model, prompt_ids, self.max_seq_len,
            temperature=config.temperature,
            filter_fn=top_p if config.top_p is not None else None,
            filter_kwargs=dict(thres=config.top_p) if config.top_p is not None else None,
            pad_id=pad_id, eos_id=eos_id,
            max_new_tokens=config.response_max_new_tokens,
            num_samples=n,
            generator=seed,
        )
        response_ids = [r[r != pad_id].cpu() for r in responses]
        texts = [self.decode(strip_response(r, pad_id, eos_id)) for r in response_ids]

        # 2) judge every candidate; 3) its valid scores
        candidates = Candidates([p for p in prompts for _ in range(n)], [ids for ids in prompt_ids for _ in range(n)],
                                texts, response_ids, num_per_prompt=n)
        judgements = self.judge(candidates, seed=seed + 7919)
        valid_scores = valid_judgement_scores(judgements.scores, self.judge, config)  # (rows, K): what the pair filters see
        return JudgedBatch(prompts, prompt_ids, texts, response_ids, judgements, valid_scores)

    def pairs_of(self, batch: JudgedBatch | None, prompt_indices: list[int]) -> MadeBatch:
        """Steps 4-5: each prompt's pair, if any, and the batch's counts."""
        stats = PairGenerationStats()
        made = MadeBatch([], dict(actor=stats), dict(actor=[]))
        if batch is None:
            return made
        config, prompts, texts, n = self.config, batch.prompts, batch.texts, self.config.num_candidate_responses
        scores, raw_outputs = batch.judgements.scores, batch.judgements.raw_outputs
        parsed, valid = ~scores.isnan(), ~batch.valid_scores.isnan()
        mean_scores = batch.valid_scores.nanmean(-1).view(len(prompts), n)  # NaN where no valid score
        lengths = torch.tensor([len(r) for r in batch.response_ids]).view(len(prompts), n)
        pair_indices = (self.pick_pairs(mean_scores, lengths) if self.pick_pairs else config.pick_paired_rewards(mean_scores)) if prompts else None

        verified = None
        if config.verifier is not None:
            verified = torch.tensor([
                check_reward_value(config.verifier(p, t), config.verifier, p, t, role="verifier")
                for p, t in zip([p for p in prompts for _ in range(n)], texts)
            ]).view(len(prompts), n)

        for i, prompt in enumerate(prompts):
            rows = slice(i * n, (i + 1) * n)
            row_stats = PairGenerationStats(
                prompts_tried=1, candidates=n, judgements=scores[rows].numel(),
                judgements_parsed=int(parsed[rows].sum()), judgements_valid=int(valid[rows].sum()),
            )
            scored = ~mean_scores[i].isnan()
            if scored.sum() >= 2:
                row_stats.prompts_scored = 1
                row_stats.prompts_tied = int(mean_scores[i][scored].unique().numel() == 1)
            if verified is not None:
                count_verifier_agreement(row_stats, mean_scores[i], verified[i])
            if raw_outputs is not None and not parsed[rows].any():
                made.examples["actor"].append(raw_outputs[i * n][0])

            chosen, rejected = pair_indices[i].tolist()
            if chosen >= 0 and rejected >= 0:
                chosen_score, rejected_score = float(mean_scores[i, chosen]), float(mean_scores[i, rejected])
                dropped_by = first_failed_filter(config.pair_filters, batch.valid_scores[i * n + chosen],
                                                 batch.valid_scores[i * n + rejected])
                if config.is_valid_reward_pair is not None and not config.is_valid_reward_pair(chosen_score, rejected_score):
                    row_stats.pairs_rejected = 1
                elif texts[i * n + chosen] == texts[i * n + rejected]:
                    row_stats.pairs_identical = 1  # same text, different scores (a stochastic judge): teaches nothing
                elif dropped_by is not None:
                    row_stats.pairs_filtered = {dropped_by: 1}
                else:
                    record = {} if self.record_kind is None else dict(kind=self.record_kind)
                    record.update(
                        prompt_index=prompt_indices[i], prompt=prompt,
                        chosen=texts[i * n + chosen], rejected=texts[i * n + rejected],
                        chosen_score=chosen_score, rejected_score=rejected_score,
                        candidate_scores=[None if math.isnan(s) else s for s in mean_scores[i].tolist()],
                    )
                    if raw_outputs is not None:
                        record["chosen_judge_outputs"] = raw_outputs[i * n + chosen]
                        record["rejected_judge_outputs"] = raw_outputs[i * n + rejected]
                    pair = PreferencePair(
                        chosen=torch.cat([batch.prompt_ids[i], batch.response_ids[i * n + chosen]]),
                        rejected=torch.cat([batch.prompt_ids[i], batch.response_ids[i * n + rejected]]),
                        prompt_len=len(batch.prompt_ids[i]), chosen_score=chosen_score, rejected_score=rejected_score,
                        record=record,
                    )
                    if verified is not None:
                        pair.chosen_verified, pair.rejected_verified = float(verified[i, chosen]), float(verified[i, rejected])
                        record["chosen_verified"], record["rejected_verified"] = pair.chosen_verified, pair.rejected_verified
                    made.pairs.append(pair)
            stats.add(row_stats)
        return made

    def gives_up(self, counts: dict) -> bool:
        """Whether nothing usable came of the prompts so far (the loop stops after `fail_fast_after_prompts`)."""
        return counts["actor"].judgements_valid == 0

    def postfix(self, made: dict[str, int], counts: dict) -> dict:
        stats = counts["actor"]
        # the pairs made are the bar's own count
        return dict(parse=f"{stats.parse_rate:.2f}", ties=f"{stats.tie_rate:.2f}", identical=stats.pairs_identical)

    def check_shortfall(self, made: dict[str, int], counts: dict, cursor: int, budget: int, examples: dict):
        """Raise `PairGenerationError` with the counts and the likely fix when pairs are missing."""
        num_pairs, stats, config = made["actor"], counts["actor"], self.config
        if num_pairs < config.num_preference_pairs and not (config.accept_fewer_pairs and num_pairs > 0):
            raise PairGenerationError(
                shortfall_message(stats, num_pairs, config, self.judge, cursor, budget, examples["actor"]), stats, num_pairs
            )


def valid_judgement_scores(scores: Tensor, judge: Judge, config: PairGenerationConfig) -> Tensor:
    """A judge's (rows, K) scores with NaN where it gave none, one off its scale, or one `config.is_valid_reward`
    refuses."""
    parsed = ~scores.isnan()
    valid = parsed.clone()
    valid[parsed] = torch.tensor(
        [judge.is_valid_score(float(s)) and bool(config.is_valid_reward(float(s))) for s in scores[parsed]], dtype=torch.bool
    )
    return scores.masked_fill(~valid, math.nan)
