"""Meta-Rewarding pair generation (Wu et al. 2024, arXiv 2407.19594, section 2): the Meta-Rewarding pair maker,
and `generate_meta_reward_pairs`, which runs it in the pair loop (pairs/loop.py).

For each batch of prompts, the maker:
  1) has the actor answer, the judge judge each answer K times, and picks the actor pairs: the judged-candidates
     maker (pairs/judged.py), with the paper's length control when asked,
  2) for each prompt, meta-judges the answer whose judgements disagree most: every pair of its valid judgements, in
     both orders, in one batched call,
  3) rates the judgements from the verdicts (Elo ratings of position-weighted wins, pairs/meta_rules.py) and makes
     the best vs the worst judgement the judge pair, after the paper's filters.
The loop fills in log p_ref of both kinds (a judge pair's: its judgements given the judge prompt) and commits both
to the stage's one pair store (records say `kind`: "actor" or "judge"; judge records hold every raw meta-judge
output), with the prompt cursor and both kinds' counts. Both kinds train together in the stage's DPO run. A
meta-judge whose verdicts never parse stops the loop with the counts and the fix.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from functools import partial

import torch
from torch import nn

from self_rewarding_lm_pytorch.data.datasets import as_token_tensor
from self_rewarding_lm_pytorch.generation.backend import LibrarySampler, Sampler
from self_rewarding_lm_pytorch.judging.judges import SelfJudge
from self_rewarding_lm_pytorch.judging.meta_judge import A, MetaJudge, MetaQuery
from self_rewarding_lm_pytorch.models.sharding import is_fully_sharded
from self_rewarding_lm_pytorch.pairs.judged import JudgedBatch, JudgedCandidatesMaker
from self_rewarding_lm_pytorch.pairs.loop import run_pair_loop
from self_rewarding_lm_pytorch.pairs.meta_rules import (
    all_ordered_pairs,
    judgement_meta_scores,
    length_controlled_pairs,
    most_disputed_answer,
    pick_judge_pair,
)
from self_rewarding_lm_pytorch.pairs.records import MadeBatch, PairKind, PreferencePair
from self_rewarding_lm_pytorch.pairs.stats import PairGenerationError, PairGenerationStats, shortfall_message


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
    pick_pairs = partial(length_controlled_pairs, length_control=config.length_control) if config.length_control is not None else None
    actor = JudgedCandidatesMaker(model, judge, config, encode=tokenizer_encode, decode=tokenizer_decode, pad_id=pad_id,
                                  eos_id=eos_id, max_seq_len=max_seq_len, sampler=sampler or LibrarySampler(),
                                  pick_pairs=pick_pairs, record_kind="actor")
    maker = MetaRewardMaker(actor, meta_judge, judge_encode=judge_encode)
    counts = run_pair_loop(
        maker, prompts, model=model, folder=folder, accelerator=accelerator, budget=budget,
        prompt_batch_size=config.prompt_batch_size, fail_fast_after_prompts=config.fail_fast_after_prompts,
        max_seq_len=max_seq_len, pad_id=pad_id, logp_reduction=config.logp_reduction, seed=seed,
        fingerprint=fingerprint, logger=logger,
    )
    return counts["actor"], counts["judge"]


class MetaRewardMaker:
    """Makes one batch's actor pairs (`actor`, a judged-candidates maker whose judge is a `SelfJudge`) and judge
    pairs (steps 1-3 above). `judge_encode` encodes the judge prompt of a judge pair."""

    name = "meta-reward pair generation"
    description = "meta-reward pairs"
    unusable = "no usable judgement or no readable verdict"

    def __init__(self, actor: JudgedCandidatesMaker, meta_judge: MetaJudge, *, judge_encode):
        self.actor, self.meta_judge, self.judge_encode = actor, meta_judge, judge_encode
        self.judge, self.config = actor.judge, actor.config
        self.kinds = actor.kinds + (PairKind("judge", self.config.num_judge_pairs, MetaJudgeStats, "judge_stats", "judge_pairs"),)

    def __call__(self, prompts: list[str], prompt_indices: list[int], seed: int) -> MadeBatch:
        # 1) actor pairs, and the judged candidates the meta-judge works on
        batch = self.actor.judge_candidates(prompts, seed)
        made = self.actor.pairs_of(batch, prompt_indices)
        # 2)-3) judge pairs
        stats = MetaJudgeStats()
        made.counts["judge"], made.examples["judge"] = stats, []
        if batch is not None:
            self._judge_pairs(batch, prompt_indices, made, stats, seed=seed + 104_729)
        return made

    @torch.no_grad()
    def _judge_pairs(self, batch: JudgedBatch, prompt_indices: list[int], made: MadeBatch, stats: MetaJudgeStats, *,
                     seed: int):
        prompts = batch.prompts
        # 2) each prompt's meta-judged answer; every pair of its valid judgements, both orders, in one call
        subjects = _meta_judged_answers(batch, self.config.num_candidate_responses)
        queries, owners = [], []
        for i, (prompt, subject) in enumerate(zip(prompts, subjects)):
            if subject is None:
                continue
            valid = [j for j, score in enumerate(subject.scores.tolist()) if not math.isnan(score)]
            for a, b in all_ordered_pairs(valid):
                queries.append(MetaQuery(prompt, batch.texts[subject.row], subject.raw[a], subject.raw[b]))
                owners.append((i, a, b))
        verdicts, outputs = self.meta_judge(queries, seed=seed) if queries else ([], [])

        # 3) judgement meta-scores and the judge pair of each prompt
        for i, prompt in enumerate(prompts):
            row_stats = MetaJudgeStats()
            self._judge_pair(i, prompt, prompt_indices[i], subjects[i], batch, verdicts, outputs, owners, row_stats, made)
            stats.add(row_stats)

    def _judge_pair(self, i, prompt, prompt_index, subject, batch, verdicts, outputs, owners, stats, made):
        judge, config = self.judge, self.config
        if subject is None:
            stats.prompts_agreeing = 1
            return
        row, score, raw_judgements = subject.row, subject.scores, subject.raw
        asked = [(a, b, verdicts[q], outputs[q]) for q, (owner, a, b) in enumerate(owners) if owner == i]
        parsed = [v for _, _, v, _ in asked if v is not None]
        stats.add(MetaJudgeStats(answers_meta_judged=1, verdicts=len(asked), verdicts_parsed=len(parsed),
                                 wins_first=sum(v == A for v in parsed)))
        if not parsed:
            made.examples["judge"].append(asked[0][3])
        meta_scores = judgement_meta_scores(len(score), [(a, b, v) for a, b, v, _ in asked])
        picked = pick_judge_pair(meta_scores, score, config.min_meta_margin)
        if isinstance(picked, str):
            stats.pairs_dropped = {picked: 1}
            return
        chosen, rejected = picked
        judge_prompt_text = judge.reward_config.render(prompt, batch.texts[row])
        judge_prompt = as_token_tensor(self.judge_encode(judge_prompt_text), "encoded judge prompt")
        seqs = [torch.cat([judge_prompt, subject.ids[j]]) for j in (chosen, rejected)]
        if max(len(s) for s in seqs) > self.actor.max_seq_len:
            stats.pairs_dropped = {"too_long": 1}
            return
        record = dict(
            kind="judge", prompt_index=prompt_index, prompt=prompt, response=batch.texts[row],
            judge_prompt=judge_prompt_text, chosen=raw_judgements[chosen], rejected=raw_judgements[rejected],
            chosen_score=float(meta_scores[chosen]), rejected_score=float(meta_scores[rejected]),
            chosen_judgement_score=float(score[chosen]), rejected_judgement_score=float(score[rejected]),
            judgement_meta_scores=[None if math.isnan(s) else s for s in meta_scores.tolist()],
            judgements=raw_judgements,  # the K judgements
            meta_judge_outputs=[dict(a=a, b=b, verdict=None if v is None else "AB"[v], output=text) for a, b, v, text in asked],
        )
        pair = PreferencePair(chosen=seqs[0], rejected=seqs[1], prompt_len=len(judge_prompt), kind="judge",
                              chosen_score=record["chosen_score"], rejected_score=record["rejected_score"], record=record)
        if config.verifier is not None and judge.reward_config.score_range is not None:
            # a judgement is right when it calls the answer right (above the middle of the scale) exactly when the
            # verifier does: diagnostics only, never used to pick
            low, high = judge.reward_config.score_range
            right = bool(config.verifier(prompt, batch.texts[row]))
            pair.chosen_verified, pair.rejected_verified = (
                float((float(score[j]) > (low + high) / 2) == right) for j in (chosen, rejected))
            record["chosen_judgement_verified"], record["rejected_judgement_verified"] = pair.chosen_verified, pair.rejected_verified
        made.pairs.append(pair)

    def gives_up(self, counts: dict) -> bool:
        meta_stats = counts["judge"]
        return self.actor.gives_up(counts) or bool(meta_stats.verdicts and not meta_stats.verdicts_parsed)

    def postfix(self, made: dict[str, int], counts: dict) -> dict:
        return dict(actor=f"{made['actor']}/{self.config.num_preference_pairs}",
                    judge=f"{made['judge']}/{self.config.num_judge_pairs}",
                    parse=f"{counts['actor'].parse_rate:.2f}", meta_parse=f"{counts['judge'].parse_rate:.2f}")

    def check_shortfall(self, made: dict[str, int], counts: dict, cursor: int, budget: int, examples: dict):
        """Raise `PairGenerationError` with both kinds' counts and the likely fix when pairs are missing."""
        targets = dict(actor=self.config.num_preference_pairs, judge=self.config.num_judge_pairs)
        _check_shortfall(counts["actor"], counts["judge"], made, targets, self.config, self.judge, cursor, budget,
                         dict(judge=examples["actor"], meta=examples["judge"]))


@dataclass
class _MetaJudgedAnswer:
    row: int  # in the batch
    scores: torch.Tensor  # (judgements,) valid scores, NaN where none
    raw: list[str]
    ids: list[torch.Tensor]


def _meta_judged_answers(batch: JudgedBatch, n: int) -> list[_MetaJudgedAnswer | None]:
    """Per prompt, the answer whose judgements are meta-judged: the paper's, the answer whose K judgements disagree
    most; None when its judgements all give one score (no judge pair could differ in score)."""
    raw, ids = batch.judgements.raw_outputs, batch.judgements.output_ids
    subjects = []
    for i in range(len(batch.prompts)):
        answer = most_disputed_answer(batch.valid_scores[i * n : (i + 1) * n])
        row = None if answer is None else i * n + answer
        subject = None if row is None else _MetaJudgedAnswer(row, batch.valid_scores[row], raw[row], ids[row])
        # a judge pair needs two judgements with different scores
        valid = None if subject is None else subject.scores[~subject.scores.isnan()]
        subjects.append(subject if subject is not None and valid.unique().numel() > 1 else None)
    return subjects


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
