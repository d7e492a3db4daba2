"""The one pair-generation loop, and `generate_preference_pairs`, which runs it with the judged-candidates maker.

The loop fills a stage's pair store with what a per-batch PAIR MAKER makes (`PairMaker`: pairs/judged.py's
judged-candidates maker, pairs/meta_reward.py's Meta-Rewarding maker). Batch after batch:
  1) take the next prompts of a fixed order per seed; each process gets its share of the batch and the seed
     `seed * 1_000_003 + cursor * 31 + process_index`,
  2) the maker makes the batch's pairs and counts them, per kind of pair (`PairKind`),
  3) log p_ref of both responses of every pair, from the generating model (it is the DPO reference), one batched
     forward per kind,
  4) the processes' pairs and counts are gathered; each kind keeps what it still needs, and the verifier's verdicts
     on the kept pairs are counted,
  5) the main process commits the kept pairs to the store, together with how many prompts were consumed and the
     counts; a progress bar on the local main process counts the pairs made toward the target (its ETA is
     the time to the last pair), the prompts tried and the maker's counts beside it. A bar that halts short of
     its total says why: no usable judgement (fail-fast), or the prompt budget spent.
At the end the counts go to the trackers at the stage's step 0 (`pairs/...`, one prefix per kind).

Bounded: prompts are never reused and the budget is finite, so a judge that never answers ends in a
`PairGenerationError` that gives the counts and the likely fix (the maker's `check_shortfall`), never in an endless
retry; when nothing usable came of `fail_fast_after_prompts` prompts it stops early. Resumable: the store's commit
holds the prompt cursor and the counts, so a killed run goes on where it stopped, with no duplicate and nothing lost.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Callable, Protocol, Sequence

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from self_rewarding_lm_pytorch.data.datasets import check_non_empty
from self_rewarding_lm_pytorch.data.fields import prompt_type_error
from self_rewarding_lm_pytorch.generation.backend import LibrarySampler, Sampler
from self_rewarding_lm_pytorch.judging.judges import Judge
from self_rewarding_lm_pytorch.models.sharding import is_fully_sharded
from self_rewarding_lm_pytorch.pairs.config import PairGenerationConfig
from self_rewarding_lm_pytorch.pairs.judged import JudgedCandidatesMaker
from self_rewarding_lm_pytorch.pairs.records import MadeBatch, PairKind, PreferencePair, Tally, as_columns
from self_rewarding_lm_pytorch.pairs.stats import PairGenerationStats
from self_rewarding_lm_pytorch.storage.fingerprint import (
    config_fingerprint,
    dataset_digest,
    describe,
    short,
    tokenizer_digest,
)
from self_rewarding_lm_pytorch.storage.pair_store import PreferenceDataWriter, read_meta
from self_rewarding_lm_pytorch.storage.tracking import MetricsLogger
from self_rewarding_lm_pytorch.training.logprobs import Reduction, reference_logprobs


class PairMaker(Protocol):
    """Makes the pairs of one batch of prompts, and says what the loop reports about them."""

    name: str  # in messages, e.g. "pair generation"
    description: str  # the progress bar's label
    unusable: str  # what `gives_up` means, e.g. "no usable judgement"
    kinds: tuple[PairKind, ...]  # the kinds of pair it makes, in the order they are stored

    def __call__(self, prompts: list[str], prompt_indices: list[int], seed: int) -> MadeBatch: ...

    def gives_up(self, counts: dict[str, Tally]) -> bool:
        """Whether nothing usable came of the prompts so far."""

    def postfix(self, made: dict[str, int], counts: dict[str, Tally]) -> dict:
        """The progress bar's counts."""

    def check_shortfall(self, made: dict[str, int], counts: dict[str, Tally], cursor: int, budget: int,
                        examples: dict[str, list[str]]) -> None:
        """Raise `PairGenerationError` when pairs are missing (and not accepted)."""


def run_pair_loop(
    maker: PairMaker,
    prompts: Sequence[str],
    *,
    model: nn.Module,
    folder: str | Path,
    accelerator: Accelerator,
    budget: int,
    prompt_batch_size: int,
    fail_fast_after_prompts: int,
    max_seq_len: int,
    pad_id: int,
    logp_reduction: Reduction,
    seed: int,
    fingerprint: dict[str, str] | None,
    logger: MetricsLogger | None,
) -> dict[str, Tally]:
    """Fill `folder` with each kind's target of pairs from `maker` over at most `budget` prompts of `prompts`
    (resuming what is there); returns each kind's counts. `model` computes the reference log-probs."""
    kinds = maker.kinds
    writer = None
    if accelerator.is_main_process:
        writer = PreferenceDataWriter(folder, capacity=sum(kind.target for kind in kinds), max_len=max_seq_len,
                                      pad_id=pad_id, with_ref_logps=True, fingerprint=fingerprint)
    accelerator.wait_for_everyone()
    committed = read_meta(folder)  # every process starts from the same commit
    progress = committed.get("progress", {})
    cursor = progress.get("prompts_consumed", 0)
    counts = {kind.name: kind.tally(**progress.get(kind.progress_key, {})) for kind in kinds}
    if committed["complete"]:
        return counts
    made = {kind.name: counts[kind.name].pairs_made for kind in kinds}

    # a fixed prompt order per seed, so a resumed run continues the same sequence of prompts
    order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(seed)).tolist()
    global_batch = prompt_batch_size * accelerator.num_processes
    examples: dict[str, list[str]] = {kind.name: [] for kind in kinds}
    # the bar counts pairs toward the target (a resumed run starts at the pairs stored), the prompts tried beside it
    target, shown = sum(kind.target for kind in kinds), accelerator.is_local_main_process
    bar = tqdm(total=target, initial=sum(made.values()), desc=maker.description, unit="pair", disable=not shown)
    bar.set_postfix(prompts=f"{cursor}/{budget}")
    while any(made[kind.name] < kind.target for kind in kinds) and cursor < budget:
        if cursor >= fail_fast_after_prompts and maker.gives_up(counts):
            if shown:
                bar.write(f"{maker.name} stops early: {maker.unusable} in {cursor} prompts (fail_fast_after_prompts="
                          f"{fail_fast_after_prompts})")
            break
        # 1) this process's share of the next batch; 2) its pairs; 3) their reference log-probs
        indices = order[cursor : min(cursor + global_batch, budget)]
        mine = indices[accelerator.process_index :: accelerator.num_processes]
        batch_seed = seed * 1_000_003 + cursor * 31 + accelerator.process_index
        batch = maker([prompts[i] for i in mine], mine, batch_seed)
        fill_reference_logprobs(model, batch.pairs, kinds, pad_id=pad_id, reduction=logp_reduction)
        batches = gather_object([batch]) if accelerator.num_processes > 1 else [batch]
        cursor += len(indices)

        # 4) what each kind keeps, and the counts
        kept = []
        for kind in kinds:
            tally = counts[kind.name]
            pairs = [p for b in batches for p in b.pairs if p.kind == kind.name][: max(kind.target - made[kind.name], 0)]
            for b in batches:
                tally.add(b.counts[kind.name])
            tally.pairs_made += len(pairs)
            count_verified(tally, pairs)  # the pairs kept (a last batch can make more than needed)
            examples[kind.name] += [text for b in batches for text in b.examples.get(kind.name, []) if text][:2]
            made[kind.name] += len(pairs)
            kept += pairs
        bar.set_postfix({"prompts": f"{cursor}/{budget}", **maker.postfix(made, counts)}, refresh=False)
        bar.update(len(kept))

        # 5) the commit
        if writer is not None:
            writer.append(**as_columns(kept), progress=dict(
                prompts_consumed=cursor, **{kind.progress_key: asdict(counts[kind.name]) for kind in kinds}))
        accelerator.wait_for_everyone()

    short = sum(made.values()) < target
    if short and cursor >= budget and shown:  # the bar halts short of its total: say why
        bar.write(f"{maker.name} stops at {sum(made.values())}/{target} pairs: all {budget} prompts of its budget are "
                  f"tried (prompts are never reused)")
    bar.close()
    (logger or MetricsLogger(accelerator)).log(
        {f"{kind.metrics_prefix}/{k}": v for kind in kinds for k, v in counts[kind.name].summary().items()}, step=0)
    maker.check_shortfall(made, counts, cursor, budget, examples)
    if short and shown:  # not refused: the stage goes on with fewer pairs
        bar.write(f"{maker.name} keeps the {sum(made.values())} pairs made (accept_fewer_pairs)")
    if writer is not None:
        writer.mark_complete()
    accelerator.wait_for_everyone()
    return counts


@torch.no_grad()
def fill_reference_logprobs(model: nn.Module, pairs: list[PreferencePair], kinds: Sequence[PairKind], *, pad_id: int,
                            reduction: Reduction):
    """Set both reference log-probs of every pair: one batched forward per kind (a judge pair's judge prompt is far
    longer than an answer's prompt; one batch would pad every answer to it). A fully sharded model runs a forward
    for every kind, an idle one for a kind without pairs, so that its ranks' forwards match."""
    for kind in kinds:
        group = [p for p in pairs if p.kind == kind.name]
        if not group and not is_fully_sharded(model):
            continue
        seqs = [p.chosen for p in group] + [p.rejected for p in group]
        prompt_len = torch.tensor([p.prompt_len for p in group] * 2, dtype=torch.long)
        logps = reference_logprobs(model, seqs, prompt_len, pad_id, reduction)
        for j, pair in enumerate(group):
            pair.chosen_ref_logp, pair.rejected_ref_logp = float(logps[j]), float(logps[len(group) + j])


def count_verified(tally: Tally, pairs: list[PreferencePair]):
    """Count the pairs whose chosen side the verifier rates strictly better, or strictly worse, than the rejected."""
    for pair in pairs:
        if pair.chosen_verified is not None:
            tally.pairs_verified_better += pair.chosen_verified > pair.rejected_verified
            tally.pairs_verified_worse += pair.chosen_verified < pair.rejected_verified


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
    if not isinstance(prompt_dataset[0], str):
        raise prompt_type_error(prompt_dataset[0], "prompt_dataset[0]")
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
    maker = JudgedCandidatesMaker(model, judge, config, encode=tokenizer_encode, decode=tokenizer_decode, pad_id=pad_id,
                                  eos_id=eos_id, max_seq_len=max_seq_len, sampler=sampler or LibrarySampler())
    counts = run_pair_loop(
        maker, prompt_dataset, model=model, folder=folder, accelerator=accelerator, budget=budget,
        prompt_batch_size=config.prompt_batch_size, fail_fast_after_prompts=config.fail_fast_after_prompts,
        max_seq_len=max_seq_len, pad_id=pad_id, logp_reduction=logp_reduction, seed=seed, fingerprint=fingerprint,
        logger=logger,
    )
    return counts["actor"]
