"""Preference-pair generation: the paper's self-instruction creation (Yuan et al. 2024, section 2.2).

For each batch of prompts:
  1) sample N candidate responses per prompt in one batched sampler call,
  2) judge every candidate (K judgements each for the model's own judge) in one batched call,
  3) average each candidate's valid scores, pick a (chosen, rejected) pair per prompt (best vs worst by
     default; equal scores give no pair, as in the paper), apply the pair rule,
  4) compute log p_ref of both responses with the generating model (it is the DPO reference),
  5) commit the pairs to the stage's folder, together with how many prompts were consumed.

Bounded: prompts are never reused and the budget is finite, so a judge that never answers ends in a
`PairGenerationError` that gives the counts and the likely fix, never in an endless retry.
Resumable: the folder's commit holds the prompt cursor and the counts, so a killed run goes on where it
stopped, with no duplicate and nothing lost. Several processes take different prompts of each batch; the
main process writes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from self_rewarding_lm_pytorch.data.datasets import as_token_tensor, check_non_empty
from self_rewarding_lm_pytorch.storage.fingerprint import config_fingerprint, dataset_digest, describe, short, tokenizer_digest
from self_rewarding_lm_pytorch.generation.backend import LibrarySampler, Sampler
from self_rewarding_lm_pytorch.judging.judges import Candidates, Judge, Judgements, check_reward_value, strip_response
from self_rewarding_lm_pytorch.training.logprobs import Reduction, reference_logprobs
from self_rewarding_lm_pytorch.pairs.config import PairGenerationConfig
from self_rewarding_lm_pytorch.pairs.selection import first_failed_filter
from self_rewarding_lm_pytorch.pairs.stats import (
    PairGenerationError,
    PairGenerationStats,
    count_verifier_agreement,
    shortfall_message,
)
from self_rewarding_lm_pytorch.storage.pair_format import read_meta
from self_rewarding_lm_pytorch.storage.pair_store import PreferenceDataWriter
from self_rewarding_lm_pytorch.generation.sampling import top_p
from self_rewarding_lm_pytorch.models.sharding import is_fully_sharded
from self_rewarding_lm_pytorch.storage.tracking import MetricsLogger


@dataclass
class _PromptResult:
    """What one prompt produced, sent from its process to the writer."""

    stats: PairGenerationStats
    pair: dict | None = None
    example_judge_output: str | None = None


@dataclass
class JudgedBatch:
    """One batch's candidates and their judgements, prompt-major (rows [i * n, (i + 1) * n) answer prompt i), for
    a stage that does more with them than pick the actor's pairs (Meta-Rewarding's meta-judge, pairs/meta_reward.py)."""

    prompt_ids: list[Tensor]  # one per prompt
    texts: list[str]
    response_ids: list[Tensor]
    judgements: Judgements
    valid_scores: Tensor  # (rows, K): the judge's scores, NaN where it gave none or an invalid one


def generate_preference_pairs(
    model: nn.Module,
    prompt_dataset: Dataset,
    judge: Judge,
    config: PairGenerationConfig,
    *,
    folder: str | Path,
    tokenizer_encode: Callable[[str], Tensor],
    tokenizer_decode: Callable[[Tensor], str],
    accelerator: Accelerator,
    pad_id: int = -1,
    eos_id: int | None = None,
    logp_reduction: Reduction = "sum",
    seed: int = 0,
    fingerprint: dict[str, str] | None = None,
    logger: MetricsLogger | None = None,
    sampler: Sampler | None = None,
) -> PairGenerationStats:
    """Fill `folder` with `config.num_preference_pairs` pairs (resuming what is there) and return the counts.

    `model` is the policy at the start of the stage: it samples, its log-probs of the chosen and rejected
    responses are stored as the DPO reference (`logp_reduction` must match the DPO stage's). `fingerprint`
    identifies what makes the pairs (default: the config, the prompts, the judge, the tokenizer and the seed);
    a folder holding pairs of another fingerprint is refused. The counts go to the trackers as `pairs/...` at
    the stage's step 0 through `logger`. `sampler`: the generation backend of the candidates (generation/backend.py; default
    the library's `sample`); a `SelfJudge` has its own."""
    check_non_empty(prompt_dataset, "prompt dataset")
    model = accelerator.unwrap_model(model)
    max_seq_len = config.max_seq_len or getattr(model, "max_seq_len", None)
    if max_seq_len is None:
        raise ValueError("pair generation needs max_seq_len (prompt + response cap): set it in the stage config")
    budget = config.max_prompts or len(prompt_dataset)
    if budget > len(prompt_dataset):
        raise ValueError(
            f"max_prompts={budget} exceeds the {len(prompt_dataset)} prompts of the dataset; prompts are never reused: "
            f"add prompts or lower max_prompts"
        )

    if fingerprint is None:
        fingerprint = dict(config_fingerprint(config), prompts=dataset_digest(prompt_dataset), judge=short(describe(judge)),
                           tokenizer=tokenizer_digest(tokenizer_encode, tokenizer_decode),
                           ids=f"{pad_id} {eos_id} {seed} {logp_reduction}")
    writer = None
    if accelerator.is_main_process:
        writer = PreferenceDataWriter(
            folder, capacity=config.num_preference_pairs, max_len=max_seq_len, pad_id=pad_id, with_ref_logps=True,
            fingerprint=fingerprint,
        )
    accelerator.wait_for_everyone()
    meta = read_meta(folder)  # every process starts from the same commit
    num_pairs = meta["num_pairs"]
    cursor = meta.get("progress", {}).get("prompts_consumed", 0)
    stats = PairGenerationStats(**meta.get("progress", {}).get("stats", {}))
    if meta["complete"]:
        return stats

    # a fixed prompt order per seed, so a resumed run continues the same sequence of prompts
    order = torch.randperm(len(prompt_dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    global_batch = config.prompt_batch_size * accelerator.num_processes
    example_outputs: list[str] = []

    bar = tqdm(total=budget, initial=cursor, desc="pairs", unit="prompt", disable=not accelerator.is_local_main_process)
    while num_pairs < config.num_preference_pairs and cursor < budget:
        if stats.judgements_valid == 0 and cursor >= config.fail_fast_after_prompts:
            bar.write(f"pair generation stops early: no usable judgement in {cursor} prompts (fail_fast_after_prompts="
                      f"{config.fail_fast_after_prompts})")
            break
        indices = order[cursor : min(cursor + global_batch, budget)]
        mine = indices[accelerator.process_index :: accelerator.num_processes]
        batch_seed = seed * 1_000_003 + cursor * 31 + accelerator.process_index
        results, _ = judge_prompts(
            model, [prompt_dataset[i] for i in mine], mine, judge, config,
            encode=tokenizer_encode, decode=tokenizer_decode, pad_id=pad_id, eos_id=eos_id,
            max_seq_len=max_seq_len, logp_reduction=logp_reduction, seed=batch_seed, sampler=sampler or LibrarySampler(),
        )
        results = gather_object(results) if accelerator.num_processes > 1 else results
        cursor += len(indices)

        pairs = [r.pair for r in results if r.pair is not None]
        kept = pairs[: config.num_preference_pairs - num_pairs]
        for result in results:
            stats.add(result.stats)
        stats.pairs_made += len(kept)
        for pair in kept:  # verifier verdicts on the pairs kept (a last batch can make more than needed)
            record = pair["record"]
            if "chosen_verified" in record:
                stats.pairs_verified_better += record["chosen_verified"] > record["rejected_verified"]
                stats.pairs_verified_worse += record["chosen_verified"] < record["rejected_verified"]
        example_outputs += [r.example_judge_output for r in results if r.example_judge_output][:2]
        num_pairs += len(kept)
        bar.update(len(indices))
        bar.set_postfix(dict(pairs=f"{num_pairs}/{config.num_preference_pairs}", parse=f"{stats.parse_rate:.2f}",
                             ties=f"{stats.tie_rate:.2f}", identical=stats.pairs_identical))

        progress = dict(prompts_consumed=cursor, stats=asdict(stats))
        if writer is not None:
            writer.append(
                chosen=[p["chosen"] for p in kept],
                rejected=[p["rejected"] for p in kept],
                prompt_len=[p["prompt_len"] for p in kept],
                chosen_reward=[p["record"]["chosen_score"] for p in kept],
                rejected_reward=[p["record"]["rejected_score"] for p in kept],
                chosen_ref_logp=[p["chosen_ref_logp"] for p in kept],
                rejected_ref_logp=[p["rejected_ref_logp"] for p in kept],
                records=[p["record"] for p in kept],
                progress=progress,
            )
        accelerator.wait_for_everyone()

    bar.close()
    (logger or MetricsLogger(accelerator)).log({f"pairs/{k}": v for k, v in stats.summary().items()}, step=0)

    if num_pairs < config.num_preference_pairs and not (config.accept_fewer_pairs and num_pairs > 0):
        raise PairGenerationError(
            shortfall_message(stats, num_pairs, config, judge, cursor, budget, example_outputs), stats, num_pairs
        )
    if writer is not None:
        writer.mark_complete()
    accelerator.wait_for_everyone()
    return stats


@torch.no_grad()
def judge_prompts(
    model: nn.Module,
    prompts: list,
    prompt_indices: list[int],
    judge: Judge,
    config: PairGenerationConfig,
    *,
    encode,
    decode,
    pad_id: int,
    eos_id: int | None,
    max_seq_len: int,
    logp_reduction: Reduction,
    seed: int,
    sampler: Sampler,
    pick_pairs: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> tuple[list[_PromptResult], JudgedBatch | None]:
    """Steps 1-4 for one batch of prompts: each prompt's counts and pair, and the judged candidates.
    `sampler` makes the candidates (generation/backend.py). `pick_pairs(mean_scores, response_lengths)` (both
    (prompts, n)) replaces `config.pick_paired_rewards`."""
    if not prompts and not is_fully_sharded(model):
        return [], None
    # (a sharded model's rank with no prompts left goes on with empty lists: its sampler, judge and log-prob calls
    # run the forwards that the other ranks' calls need)
    for prompt in prompts:
        if not isinstance(prompt, str):
            raise TypeError(f"prompt datasets hold strings (they are encoded with tokenizer_encode), got {type(prompt).__name__}")
    prompt_ids = [as_token_tensor(encode(p), "encoded prompt") for p in prompts]
    for prompt, ids in zip(prompts, prompt_ids):
        if len(ids) >= max_seq_len:
            raise ValueError(
                f"prompt {prompt[:60]!r} is {len(ids)} tokens, leaving no room for a response under "
                f"max_seq_len={max_seq_len}: shorten the prompt or raise max_seq_len"
            )

    # 1) N candidates per prompt in one call; rows are prompt-major
    n = config.num_candidate_responses
    responses = sampler(
        model, prompt_ids, max_seq_len,
        temperature=config.temperature,
        filter_fn=top_p if config.top_p is not None else None,
        filter_kwargs=dict(thres=config.top_p) if config.top_p is not None else None,
        pad_id=pad_id, eos_id=eos_id,
        max_new_tokens=config.response_max_new_tokens,
        num_samples=n,
        generator=seed,
    )
    response_ids = [r[r != pad_id].cpu() for r in responses]
    texts = [decode(strip_response(r, pad_id, eos_id)) for r in response_ids]
    repeated_prompts = [p for p in prompts for _ in range(n)]
    repeated_ids = [ids for ids in prompt_ids for _ in range(n)]

    # 2) judge every candidate; 3) average its valid scores
    judgements = judge(Candidates(repeated_prompts, repeated_ids, texts, response_ids, num_per_prompt=n), seed=seed + 7919)
    scores = judgements.scores
    parsed = ~scores.isnan()
    valid_scores = valid_judgement_scores(scores, judge, config)  # (rows, K): what the pair filters see
    valid = ~valid_scores.isnan()
    mean_scores = valid_scores.nanmean(-1)  # NaN where no valid score
    mean_scores = mean_scores.view(len(prompts), n)
    lengths = torch.tensor([len(r) for r in response_ids]).view(len(prompts), n)
    pair_indices = (pick_pairs(mean_scores, lengths) if pick_pairs else config.pick_paired_rewards(mean_scores)) if prompts else None

    verified = None
    if config.verifier is not None:
        verified = torch.tensor([
            check_reward_value(config.verifier(p, t), config.verifier, p, t, role="verifier")
            for p, t in zip(repeated_prompts, texts)
        ]).view(len(prompts), n)

    results = []
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
        result = _PromptResult(row_stats)
        if judgements.raw_outputs is not None and not parsed[rows].any():
            result.example_judge_output = judgements.raw_outputs[i * n][0]

        chosen, rejected = pair_indices[i].tolist()
        if chosen >= 0 and rejected >= 0:
            chosen_score, rejected_score = float(mean_scores[i, chosen]), float(mean_scores[i, rejected])
            dropped_by = first_failed_filter(config.pair_filters, valid_scores[i * n + chosen], valid_scores[i * n + rejected])
            if config.is_valid_reward_pair is not None and not config.is_valid_reward_pair(chosen_score, rejected_score):
                row_stats.pairs_rejected = 1
            elif texts[i * n + chosen] == texts[i * n + rejected]:
                row_stats.pairs_identical = 1  # same text, different scores (a stochastic judge): teaches nothing
            elif dropped_by is not None:
                row_stats.pairs_filtered = {dropped_by: 1}
            else:
                record = dict(
                    prompt_index=prompt_indices[i], prompt=prompt,
                    chosen=texts[i * n + chosen], rejected=texts[i * n + rejected],
                    chosen_score=chosen_score, rejected_score=rejected_score,
                    candidate_scores=[None if math.isnan(s) else s for s in mean_scores[i].tolist()],
                )
                if judgements.raw_outputs is not None:
                    record["chosen_judge_outputs"] = judgements.raw_outputs[i * n + chosen]
                    record["rejected_judge_outputs"] = judgements.raw_outputs[i * n + rejected]
                if verified is not None:
                    record["chosen_verified"], record["rejected_verified"] = float(verified[i, chosen]), float(verified[i, rejected])
                result.pair = dict(
                    chosen=torch.cat([prompt_ids[i], response_ids[i * n + chosen]]),
                    rejected=torch.cat([prompt_ids[i], response_ids[i * n + rejected]]),
                    prompt_len=len(prompt_ids[i]),
                    record=record,
                )
        results.append(result)

    # 4) log p_ref of every kept pair's responses, from the generating model, in one batched forward
    pairs = [r.pair for r in results if r.pair is not None]
    if pairs or is_fully_sharded(model):  # every rank of a sharded model runs this forward
        seqs = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
        prompt_len = torch.tensor([p["prompt_len"] for p in pairs] * 2, dtype=torch.long)
        logps = reference_logprobs(model, seqs, prompt_len, pad_id, logp_reduction)
        for j, pair in enumerate(pairs):
            pair["chosen_ref_logp"], pair["rejected_ref_logp"] = float(logps[j]), float(logps[len(pairs) + j])
    return results, JudgedBatch(prompt_ids, texts, response_ids, judgements, valid_scores)


def valid_judgement_scores(scores: Tensor, judge: Judge, config: PairGenerationConfig) -> Tensor:
    """A judge's (rows, K) scores with NaN where it gave none, one off its scale, or one `config.is_valid_reward`
    refuses."""
    parsed = ~scores.isnan()
    valid = parsed.clone()
    valid[parsed] = torch.tensor(
        [judge.is_valid_score(float(s)) and bool(config.is_valid_reward(float(s))) for s in scores[parsed]], dtype=torch.bool
    )
    return scores.masked_fill(~valid, math.nan)
