"""Meta-Rewarding pair generation and its stage runner (Wu et al. 2024, arXiv 2407.19594, section 2).

For each batch of prompts:
  1) the actor answers, the judge judges each answer K times, and actor pairs are picked (pair_generation's
     `judge_prompts`, with the paper's length control when asked),
  2) for each prompt, the answer whose judgements disagree most is meta-judged: every pair of its valid
     judgements, in both orders, in one batched call (with `dissent_judgements`: the top-scored answer, judged that
     many more times, so that a judgement the K agree on can meet a dissent),
  3) the verdicts rate the judgements (Elo ratings of position-weighted wins, pairs/meta_rules.py) and the best vs the worst
     judgement form the judge pair, after the paper's filters,
  4) log p_ref of each judge pair's judgements given the judge prompt, from the generating model,
  5) both kinds are committed to the stage's one pair store (records say `kind`: "actor" or "judge", judge records
     hold every raw meta-judge output), with the prompt cursor and both kinds' counts.
Both kinds train together in the stage's DPO run. Bounded and resumable as pairs/loop.py is: prompts are
never reused, a meta-judge whose verdicts never parse stops with the counts and the fix, and a killed run goes on
from the last commit.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from functools import partial

import torch
from accelerate.utils import gather_object
from torch import nn
from tqdm.auto import tqdm

from self_rewarding_lm_pytorch.data.datasets import as_token_tensor
from self_rewarding_lm_pytorch.generation.backend import LibrarySampler, Sampler
from self_rewarding_lm_pytorch.judging.judges import Candidates, SelfJudge
from self_rewarding_lm_pytorch.training.logprobs import reference_logprobs
from self_rewarding_lm_pytorch.judging.meta_judge import A, MetaJudge, MetaQuery
from self_rewarding_lm_pytorch.pairs.meta_rules import (
    all_ordered_pairs,
    judgement_meta_scores,
    length_controlled_pairs,
    most_disputed_answer,
    pick_judge_pair,
    top_scored_answer,
)
from self_rewarding_lm_pytorch.pairs.loop import JudgedBatch, judge_prompts, valid_judgement_scores
from self_rewarding_lm_pytorch.pairs.stats import PairGenerationError, PairGenerationStats, shortfall_message
from self_rewarding_lm_pytorch.storage.pair_format import read_meta
from self_rewarding_lm_pytorch.storage.pair_store import PreferenceDataWriter
from self_rewarding_lm_pytorch.models.sharding import is_fully_sharded
from self_rewarding_lm_pytorch.storage.tracking import MetricsLogger


@dataclass
class MetaJudgeStats:
    """The judge pairs' counts over every prompt tried (cumulative across resumed runs)."""

    prompts_agreeing: int = 0  # every answer's judgements gave the same score: nothing to meta-judge
    answers_meta_judged: int = 0
    verdicts: int = 0
    verdicts_parsed: int = 0
    wins_first: int = 0  # parsed verdicts naming the judgement shown first
    pairs_dropped: dict[str, int] = field(default_factory=dict)  # by reason: meta_tied, equal_scores, meta_margin, ...
    pairs_made: int = 0
    pairs_verified_better: int = 0  # the chosen judgement agrees with the verifier and the rejected does not
    pairs_verified_worse: int = 0

    @property
    def parse_rate(self) -> float:
        return self.verdicts_parsed / max(self.verdicts, 1)

    @property
    def first_position_rate(self) -> float:
        return self.wins_first / max(self.verdicts_parsed, 1)

    def add(self, other: MetaJudgeStats):
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            merged = {k: mine.get(k, 0) + theirs.get(k, 0) for k in {**mine, **theirs}} if isinstance(mine, dict) else mine + theirs
            setattr(self, f.name, merged)

    def summary(self) -> dict:
        row = asdict(self)
        row.update({f"pairs_dropped/{reason}": count for reason, count in row.pop("pairs_dropped").items()})
        row.update(parse_rate=self.parse_rate, first_position_rate=self.first_position_rate)
        return row


@dataclass
class _JudgePairResult:
    stats: MetaJudgeStats
    pair: dict | None = None
    example_output: str | None = None


def generate_meta_reward_pairs(model: nn.Module, config, judge: SelfJudge, meta_judge: MetaJudge,
                               *, folder, tokenizer_encode, tokenizer_decode, judge_encode, accelerator, pad_id=-1,
                               eos_id=None, seed=0, fingerprint=None, logger=None, sampler: Sampler | None = None
                               ) -> tuple[PairGenerationStats, MetaJudgeStats]:
    """Fill `folder` with up to `config.num_preference_pairs` actor pairs and `config.num_judge_pairs` judge pairs
    (resuming what is there); returns both kinds' counts, also logged as `pairs/...` and `judge_pairs/...`.
    `sampler` makes the candidates (generation/backend.py; default the library's `sample`); the judge and the meta-judge
    have their own."""
    model = accelerator.unwrap_model(model)
    if is_fully_sharded(model):
        raise NotImplementedError("MetaRewardDPOConfig does not run on a fully sharded model yet: use data parallelism")
    max_seq_len = config.max_seq_len or getattr(model, "max_seq_len", None)
    if max_seq_len is None:
        raise ValueError("MetaRewardDPOConfig needs max_seq_len (prompt + response cap): set it in the stage config")
    prompts = config.prompt_dataset
    budget = config.max_prompts or len(prompts)
    if budget > len(prompts):
        raise ValueError(f"max_prompts={budget} exceeds the {len(prompts)} prompts of the dataset; prompts are never reused")
    targets = dict(actor=config.num_preference_pairs, judge=config.num_judge_pairs)
    writer = None
    if accelerator.is_main_process:
        writer = PreferenceDataWriter(folder, capacity=sum(targets.values()), max_len=max_seq_len, pad_id=pad_id,
                                      with_ref_logps=True, fingerprint=fingerprint)
    accelerator.wait_for_everyone()
    committed = read_meta(folder)  # every process starts from the same commit
    progress = committed.get("progress", {})
    cursor = progress.get("prompts_consumed", 0)
    stats = PairGenerationStats(**progress.get("stats", {}))
    meta_stats = MetaJudgeStats(**progress.get("judge_stats", {}))
    made = dict(actor=stats.pairs_made, judge=meta_stats.pairs_made)
    if committed["complete"]:
        return stats, meta_stats

    order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(seed)).tolist()
    global_batch = config.prompt_batch_size * accelerator.num_processes
    pick_pairs = partial(length_controlled_pairs, length_control=config.length_control) if config.length_control is not None else None
    examples: dict[str, list[str]] = dict(judge=[], meta=[])
    bar = tqdm(total=budget, initial=cursor, desc="meta-reward pairs", unit="prompt", disable=not accelerator.is_local_main_process)
    while any(made[k] < targets[k] for k in targets) and cursor < budget:
        if cursor >= config.fail_fast_after_prompts and (
            stats.judgements_valid == 0 or (meta_stats.verdicts and not meta_stats.verdicts_parsed)
        ):
            bar.write(f"meta-reward pair generation stops early: no usable judgement or no readable verdict in {cursor} "
                      f"prompts (fail_fast_after_prompts={config.fail_fast_after_prompts})")
            break
        indices = order[cursor : min(cursor + global_batch, budget)]
        mine = indices[accelerator.process_index :: accelerator.num_processes]
        batch_seed = seed * 1_000_003 + cursor * 31 + accelerator.process_index
        kwargs = dict(pad_id=pad_id, eos_id=eos_id, max_seq_len=max_seq_len, logp_reduction=config.logp_reduction)
        # 1) actor pairs, and the judged candidates the meta-judge works on
        results, batch = judge_prompts(model, [prompts[i] for i in mine], mine, judge, config, encode=tokenizer_encode,
                                       decode=tokenizer_decode, seed=batch_seed, pick_pairs=pick_pairs,
                                       sampler=sampler or LibrarySampler(), **kwargs)
        # 2)-4) judge pairs
        judge_results = _judge_pairs(model, [prompts[i] for i in mine], mine, batch, judge, meta_judge, config,
                                     judge_encode=judge_encode, seed=batch_seed + 104_729, **kwargs)
        if accelerator.num_processes > 1:
            results, judge_results = gather_object(results), gather_object(judge_results)
        cursor += len(indices)

        actor = [dict(r.pair, record=dict(kind="actor", **r.pair["record"])) for r in results if r.pair is not None]
        actor = actor[: max(targets["actor"] - made["actor"], 0)]
        judged = [r.pair for r in judge_results if r.pair is not None][: max(targets["judge"] - made["judge"], 0)]
        for result in results:
            stats.add(result.stats)
        for result in judge_results:
            meta_stats.add(result.stats)
        stats.pairs_made += len(actor)
        meta_stats.pairs_made += len(judged)
        for pair in actor:
            record = pair["record"]
            if "chosen_verified" in record:
                stats.pairs_verified_better += record["chosen_verified"] > record["rejected_verified"]
                stats.pairs_verified_worse += record["chosen_verified"] < record["rejected_verified"]
        for pair in judged:
            record = pair["record"]
            if "chosen_judgement_verified" in record:
                meta_stats.pairs_verified_better += record["chosen_judgement_verified"] > record["rejected_judgement_verified"]
                meta_stats.pairs_verified_worse += record["chosen_judgement_verified"] < record["rejected_judgement_verified"]
        examples["judge"] += [r.example_judge_output for r in results if r.example_judge_output][:2]
        examples["meta"] += [r.example_output for r in judge_results if r.example_output][:2]
        made["actor"] += len(actor)
        made["judge"] += len(judged)
        bar.update(len(indices))
        bar.set_postfix(dict(actor=f"{made['actor']}/{targets['actor']}", judge=f"{made['judge']}/{targets['judge']}",
                             parse=f"{stats.parse_rate:.2f}", meta_parse=f"{meta_stats.parse_rate:.2f}"))

        if writer is not None:
            kept = actor + judged
            writer.append(
                chosen=[p["chosen"] for p in kept], rejected=[p["rejected"] for p in kept],
                prompt_len=[p["prompt_len"] for p in kept],
                chosen_reward=[p["record"]["chosen_score"] for p in kept],
                rejected_reward=[p["record"]["rejected_score"] for p in kept],
                chosen_ref_logp=[p["chosen_ref_logp"] for p in kept], rejected_ref_logp=[p["rejected_ref_logp"] for p in kept],
                records=[p["record"] for p in kept],
                progress=dict(prompts_consumed=cursor, stats=asdict(stats), judge_stats=asdict(meta_stats)),
            )
        accelerator.wait_for_everyone()

    bar.close()
    (logger or MetricsLogger(accelerator)).log(
        {**{f"pairs/{k}": v for k, v in stats.summary().items()},
         **{f"judge_pairs/{k}": v for k, v in meta_stats.summary().items()}}, step=0)
    _check_shortfall(stats, meta_stats, made, targets, config, judge, cursor, budget, examples)
    if writer is not None:
        writer.mark_complete()
    accelerator.wait_for_everyone()
    return stats, meta_stats


@torch.no_grad()
def _judge_pairs(model, prompts, prompt_indices, batch: JudgedBatch | None, judge: SelfJudge, meta_judge: MetaJudge,
                 config, *, judge_encode, pad_id, eos_id, max_seq_len, logp_reduction, seed
                 ) -> list[_JudgePairResult]:
    if batch is None:
        return []
    # 2) each prompt's meta-judged answer; every pair of its valid judgements, both orders, in one call
    subjects = _meta_judged_answers(prompts, batch, judge, config, seed=seed + 15_485_863)
    queries, owners = [], []
    for i, (prompt, subject) in enumerate(zip(prompts, subjects)):
        if subject is None:
            continue
        valid = [j for j, score in enumerate(subject.scores.tolist()) if not math.isnan(score)]
        for a, b in all_ordered_pairs(valid):
            queries.append(MetaQuery(prompt, batch.texts[subject.row], subject.raw[a], subject.raw[b]))
            owners.append((i, a, b))
    verdicts, outputs = meta_judge(queries, seed=seed) if queries else ([], [])

    # 3) judgement meta-scores and the judge pair of each prompt
    results = []
    for i, prompt in enumerate(prompts):
        result = _JudgePairResult(MetaJudgeStats())
        results.append(result)
        subject = subjects[i]
        if subject is None:
            result.stats.prompts_agreeing = 1
            continue
        row, score, raw_judgements = subject.row, subject.scores, subject.raw
        asked = [(a, b, verdicts[q], outputs[q]) for q, (owner, a, b) in enumerate(owners) if owner == i]
        parsed = [v for _, _, v, _ in asked if v is not None]
        result.stats.add(MetaJudgeStats(answers_meta_judged=1, verdicts=len(asked), verdicts_parsed=len(parsed),
                                        wins_first=sum(v == A for v in parsed)))
        if not parsed:
            result.example_output = asked[0][3]
        meta_scores = judgement_meta_scores(len(score), [(a, b, v) for a, b, v, _ in asked])
        picked = pick_judge_pair(meta_scores, score, config.min_meta_margin)
        if isinstance(picked, str):
            result.stats.pairs_dropped = {picked: 1}
            continue
        chosen, rejected = picked
        judge_prompt_text = judge.reward_config.render(prompt, batch.texts[row])
        judge_prompt = as_token_tensor(judge_encode(judge_prompt_text), "encoded judge prompt")
        seqs = [torch.cat([judge_prompt, subject.ids[j]]) for j in (chosen, rejected)]
        if max(len(s) for s in seqs) > max_seq_len:
            result.stats.pairs_dropped = {"too_long": 1}
            continue
        record = dict(
            kind="judge", prompt_index=prompt_indices[i], prompt=prompt, response=batch.texts[row],
            judge_prompt=judge_prompt_text, chosen=raw_judgements[chosen], rejected=raw_judgements[rejected],
            chosen_score=float(meta_scores[chosen]), rejected_score=float(meta_scores[rejected]),
            chosen_judgement_score=float(score[chosen]), rejected_judgement_score=float(score[rejected]),
            judgement_meta_scores=[None if math.isnan(s) else s for s in meta_scores.tolist()],
            judgements=raw_judgements,  # the K judgements, then any dissent judgements
            meta_judge_outputs=[dict(a=a, b=b, verdict=None if v is None else "AB"[v], output=text) for a, b, v, text in asked],
        )
        if config.verifier is not None and judge.reward_config.score_range is not None:
            # a judgement is right when it calls the answer right (above the middle of the scale) exactly when the
            # verifier does: diagnostics only, never used to pick
            low, high = judge.reward_config.score_range
            right = bool(config.verifier(prompt, batch.texts[row]))
            record["chosen_judgement_verified"], record["rejected_judgement_verified"] = (
                float((float(score[j]) > (low + high) / 2) == right) for j in (chosen, rejected))
        result.pair = dict(chosen=seqs[0], rejected=seqs[1], prompt_len=len(judge_prompt), record=record)

    # 4) log p_ref of the judgements given the judge prompt, one batched forward
    pairs = [r.pair for r in results if r.pair is not None]
    if pairs:
        seqs = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
        prompt_len = torch.tensor([p["prompt_len"] for p in pairs] * 2, dtype=torch.long)
        logps = reference_logprobs(model, seqs, prompt_len, pad_id, logp_reduction)
        for j, pair in enumerate(pairs):
            pair["chosen_ref_logp"], pair["rejected_ref_logp"] = float(logps[j]), float(logps[len(pairs) + j])
    return results


@dataclass
class _MetaJudgedAnswer:
    row: int  # in the batch
    scores: torch.Tensor  # (judgements,) valid scores, NaN where none
    raw: list[str]
    ids: list[torch.Tensor]


def _meta_judged_answers(prompts, batch: JudgedBatch, judge: SelfJudge, config, *, seed
                         ) -> list[_MetaJudgedAnswer | None]:
    """Per prompt, the answer whose judgements are meta-judged, or None when its judgements all give one score (no
    judge pair could differ in score). The paper's: the answer whose K judgements disagree most. With
    `config.dissent_judgements`: the top-scored answer, which the actor pair is trained towards, judged that many more
    times at `dissent_temperature`; a wrong answer that every judgement passes is then meta-judged whenever one
    dissent fails it."""
    n, raw, ids = config.num_candidate_responses, batch.judgements.raw_outputs, batch.judgements.output_ids
    pick = top_scored_answer if config.dissent_judgements else most_disputed_answer
    rows = []
    for i in range(len(prompts)):
        answer = pick(batch.valid_scores[i * n : (i + 1) * n])
        rows.append(None if answer is None else i * n + answer)
    subjects = [None if row is None else _MetaJudgedAnswer(row, batch.valid_scores[row], raw[row], ids[row]) for row in rows]
    asked = [i for i, row in enumerate(rows) if row is not None]
    if config.dissent_judgements and asked:
        dissent_judge = judge.with_sampling(config.dissent_judgements, config.dissent_temperature)
        extra = dissent_judge(Candidates([prompts[i] for i in asked], [batch.prompt_ids[i] for i in asked],
                                         [batch.texts[rows[i]] for i in asked], [batch.response_ids[rows[i]] for i in asked]),
                              seed=seed)
        extra_scores = valid_judgement_scores(extra.scores, judge, config)
        for j, i in enumerate(asked):
            s = subjects[i]
            subjects[i] = _MetaJudgedAnswer(s.row, torch.cat([s.scores, extra_scores[j]]), s.raw + extra.raw_outputs[j],
                                            s.ids + extra.output_ids[j])
    # a judge pair needs two judgements with different scores
    return [s if s is not None and s.scores[~s.scores.isnan()].unique().numel() > 1 else None for s in subjects]


def _check_shortfall(stats, meta_stats, made, targets, config, judge, cursor, budget, examples):
    """Raise `PairGenerationError` with both kinds' counts and the likely fix when pairs are missing."""
    counts = (
        f"Meta-reward pairs after {cursor} of {budget} prompts: actor {made['actor']}/{targets['actor']}, judge "
        f"{made['judge']}/{targets['judge']}; meta-judge: {meta_stats.verdicts} verdicts asked, {meta_stats.verdicts_parsed} "
        f"parsed, {meta_stats.answers_meta_judged} answers meta-judged, {meta_stats.prompts_agreeing} prompts whose "
        f"judgements all agreed, judge pairs dropped {meta_stats.pairs_dropped or '{}'}."
    )
    if meta_stats.verdicts and not meta_stats.verdicts_parsed:
        shown = "; ".join(repr(text[:80]) for text in examples["meta"][:2]) or "(none)"
        raise PairGenerationError(
            f"{counts} The meta-judge never produced a verdict its MetaJudgeConfig can parse (e.g. 'Winner: A'); its "
            f"outputs look like: {shown}. Fine-tune the model on meta-judge examples first (judgement pairs with the "
            f"verdict naming the better one), or pass a MetaJudgeConfig whose verdict_regex_template (or parse_verdict) "
            f"matches its output.", stats, made["actor"] + made["judge"])
    if made["actor"] < targets["actor"] and not (config.accept_fewer_pairs and made["actor"] > 0):
        raise PairGenerationError(
            f"{counts} Actor pairs: " + shortfall_message(stats, made["actor"], config, judge, cursor, budget, examples["judge"]),
            stats, made["actor"] + made["judge"])
    if made["judge"] < targets["judge"] and not config.accept_fewer_pairs:
        cause = (
            "Most prompts' judgements agreed (nothing to meta-judge) or gave equal scores: raise num_judgements or "
            "judge_temperature." if meta_stats.prompts_agreeing + meta_stats.pairs_dropped.get("equal_scores", 0)
            > meta_stats.pairs_dropped.get("meta_tied", 0) else
            "The meta-judge's verdicts rarely separate two judgements (a position-biased meta-judge's wins count for "
            "little): check its outputs in the judge records, or lower min_meta_margin."
        )
        raise PairGenerationError(
            f"{counts} Judge pairs: {cause} Add prompts, lower num_judge_pairs, or pass accept_fewer_pairs=True to keep "
            f"the pairs made.", stats, made["actor"] + made["judge"])
