"""Batched sampling: left-padded prompts, KV cache, per-row EOS and length caps, filters, a seeded generator.

    responses = sample(model, [prompt_a, prompt_b], seq_len=64, temperature=0.7, filter_fn=top_p, eos_id=0)

Each step reads the logits at the last position (they predict the next token), samples one token for every
row at once, and stops when every row has produced its EOS or reached its cap. Models plug in through a small
`Decoder` protocol (models/decoders.py): x-transformers' `TransformerWrapper` gets a KV-cached decoder, a model that
defines `make_decoder()` brings its own (the HuggingFace adapter does), any other Module is re-run on the whole
sequence each step. A prefix common to every prompt (`shared_prefix`) is computed once when the decoder can share it.
"""

from __future__ import annotations

import inspect
import itertools
import math
import warnings
from collections.abc import Callable, Sequence

import torch
from accelerate.utils import extract_model_from_parallel
from beartype import BeartypeConf, beartype
from einops import rearrange, repeat
from torch import Tensor, nn

from self_rewarding_lm_pytorch.data.datasets import as_token_tensor, strip_right_padding
from self_rewarding_lm_pytorch.models.decoders import (  # noqa: F401  (public here too)
    Decoder,
    RecomputeDecoder,
    XTransformersKVDecoder,
    absolute_position_limit,
    make_decoder,
)
from self_rewarding_lm_pytorch.models.sharding import all_ranks_done, idle_forward, is_fully_sharded

STOP_CHECK_EVERY = 8  # decode steps between checks that every row has ended (each check is a host-device sync)

# filters: logits (b, vocab) -> logits with the excluded tokens at -inf


def top_k(logits: Tensor, frac_num_tokens: float = 0.1, k: int | None = None) -> Tensor:
    """Keep exactly the k most likely tokens (k given, or a fraction of the vocabulary); ties at the k-th
    value are broken by `topk`, so k tokens stay, never more."""
    k = k if k is not None else max(1, math.ceil(frac_num_tokens * logits.shape[-1]))
    k = min(k, logits.shape[-1])
    kept = logits.topk(k, dim=-1)
    return torch.full_like(logits, -math.inf).scatter(-1, kept.indices, kept.values)


def top_p(logits: Tensor, thres: float = 0.9) -> Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens whose probability reaches `thres`."""
    sorted_logits, sorted_indices = logits.sort(dim=-1, descending=True)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    # a token is dropped when the tokens before it already reach thres; the most likely token always stays
    drop = (cumulative - sorted_logits.softmax(dim=-1)) >= thres
    drop[..., 0] = False
    return logits.masked_fill(drop.scatter(-1, sorted_indices, drop), -math.inf)


def min_p(logits: Tensor, min_p: float = 0.1) -> Tensor:
    """Keep tokens whose probability is at least `min_p` times the most likely token's (Nguyen et al. 2024)."""
    probs = logits.softmax(dim=-1)
    return logits.masked_fill(probs < min_p * probs.amax(dim=-1, keepdim=True), -math.inf)


def check_sampling_settings(config, temperature_field: str, top_p_field: str):
    """Validate a config's sampling fields at construction: temperature >= 0, top_p in (0, 1] or None."""
    name = type(config).__name__
    if getattr(config, temperature_field) < 0:
        raise ValueError(f"{name}.{temperature_field} must be >= 0 (0 is greedy), got {getattr(config, temperature_field)}")
    value = getattr(config, top_p_field)
    if value is not None and not 0 < value <= 1:
        raise ValueError(f"{name}.{top_p_field} must be in (0, 1] or None, got {value}")


# sampling


def as_prompt_list(prompts: Tensor | Sequence[Tensor], pad_id: int, allow_empty: bool = False) -> list[Tensor]:
    """`sample`'s prompts as a list of 1-D token tensors (a 2-D tensor loses its right padding), none empty."""
    if torch.is_tensor(prompts):
        if prompts.ndim == 1:
            prompts = prompts[None]
        if prompts.ndim != 2:
            raise ValueError(f"prompts must be a list of 1-D tensors or a 2-D tensor, got shape {tuple(prompts.shape)}")
        rows = [strip_right_padding(as_token_tensor(row, f"prompt {i}"), pad_id, f"prompt {i}") for i, row in enumerate(prompts)]
    else:
        rows = [as_token_tensor(p, f"prompt {i}") for i, p in enumerate(prompts)]
    if not rows and not allow_empty:
        raise ValueError("sample() got no prompts")
    for i, row in enumerate(rows):
        if len(row) == 0:
            raise ValueError(f"prompt {i} is empty (length 0): every row needs at least one token to condition on")
    return rows


def _make_generator(generator: torch.Generator | int | None, device: torch.device) -> torch.Generator | None:
    if generator is None:
        return None
    if isinstance(generator, torch.Generator):
        if generator.device.type != device.type:
            raise ValueError(f"generator is on {generator.device} but the model is on {device}; pass an int seed instead")
        return generator
    return torch.Generator(device=device).manual_seed(int(generator))


@torch.no_grad()  # not inference_mode: the tokens feed later training forwards, which cannot save inference tensors
@beartype(conf=BeartypeConf(is_pep484_tower=True))  # once per call; an int temperature is a float
def sample(
    net: nn.Module,
    prompts: Tensor | Sequence[Tensor],
    seq_len: int | None = None,
    temperature: float = 1.0,
    filter_fn: Callable[..., Tensor] | None = None,
    filter_kwargs: dict | None = None,
    pad_id: int = -1,
    eos_id: int | None = None,
    output_keep_prompt: bool = False,
    *,
    max_new_tokens: int | None = None,
    num_samples: int = 1,
    generator: torch.Generator | int | None = None,
    cache_kv: bool = True,
    shared_prefix: Tensor | None = None,
) -> Tensor:
    """Continue every prompt, all rows in one batch.

    prompts: a list of 1-D token tensors (any lengths; integral floats are accepted) or a 2-D tensor right-padded
    with `pad_id`. seq_len: cap on each row's total length, prompt included; max_new_tokens: cap on new tokens; at
    least one is needed, both give the smaller. temperature: 0 is greedy. filter_fn: e.g. `top_p`, `top_k`, `min_p`,
    called as filter_fn(logits, **filter_kwargs). eos_id: a row stops after its EOS (kept in the output).
    num_samples: continuations per prompt; the prompt is prefilled once. generator: a torch.Generator on the model's
    device or an int seed, for reproducible sampling. cache_kv: False re-runs the whole sequence every token.

    Returns (num_prompts * num_samples, L) token ids, prompt-major (row i * num_samples + j is prompt i's j-th
    sample), right-padded with `pad_id`: the responses, or each prompt followed by its response if
    `output_keep_prompt`. The model is sampled in eval mode and its train/eval flag restored afterwards.

    shared_prefix: 1-D token ids that precede every prompt (the prompts are then what follows it); the same result
    as passing each prompt with the prefix in front (`output_keep_prompt` rows include it), but the prefix is
    computed once for all rows when the model's decoder can share it (x-transformers' KV cache, the HF adapter).

    A model sharded with FSDP2 (every rank calls `sample` together): ranks keep running forwards until every rank's
    rows are finished, and a rank with no prompts in this call passes an empty list (it gets a (0, 0) tensor).
    """
    # DDP and friends hide the model's type and methods; a compiled model would recompile at every new length
    net = extract_model_from_parallel(net, keep_torch_compile=False)
    sharded = is_fully_sharded(net)
    rows = as_prompt_list(prompts, pad_id, allow_empty=sharded)
    check_sample_arguments(seq_len, max_new_tokens, num_samples, temperature)

    prefix_len = 0
    if shared_prefix is not None and len(shared_prefix) and rows:
        prefix = as_token_tensor(shared_prefix, "shared_prefix")
        rows = [torch.cat([prefix, row]) for row in rows]
        # sharded: every rank must run the same forwards, and whether a rank shares depends on its rows: never share
        prefix_len = 0 if sharded else len(prefix)

    device = next(net.parameters()).device
    if not rows:  # a sharded model's rank with nothing to sample: it runs the forwards of the others
        _run_idle(net, device)
        return torch.empty(0, 0, dtype=torch.long, device=device)
    # 1) how many tokens each row may add
    prompt_lens, budget = token_budgets(net, rows, seq_len, max_new_tokens)

    # 2) left-pad the prompts into one batch (built on the host, moved once)
    width = int(prompt_lens.max())
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = row
    ids, prompt_lens, budget = ids.to(device), prompt_lens.to(device), budget.to(device)
    seq_start_pos = width - prompt_lens

    was_training = net.training
    net.eval()
    try:
        # 3) prefill once, then repeat the cache for each sample
        decoder = make_decoder(net, cache_kv)
        logits = _prefill(decoder, ids, seq_start_pos, prefix_len)
        if num_samples > 1:
            decoder.repeat(num_samples)
            logits = repeat(logits, "b v -> (b n) v", n=num_samples)
            budget = repeat(budget, "b -> (b n)", n=num_samples)
        # 4) decode until every row has finished
        generated, lengths = _decode_loop(decoder, logits, budget, temperature, filter_fn, filter_kwargs or {},
                                          pad_id, eos_id, _make_generator(generator, device), net if sharded else None)
    finally:
        net.train(was_training)

    if not output_keep_prompt:
        return generated

    # each prompt followed by its response: column j of row i reads the prompt before prompt_len[i], then the response
    prompt_lens = repeat(prompt_lens, "b -> (b n)", n=num_samples)
    prompts_right = repeat(ids, "b w -> (b n) w", n=num_samples).gather(
        1, (torch.arange(width, device=device) + repeat(width - prompt_lens, "b -> b 1")).clamp(max=width - 1))
    both = torch.cat([prompts_right, generated, torch.full_like(prompts_right, pad_id)], dim=-1)
    columns = torch.arange(width + generated.shape[1], device=device)
    in_prompt = columns < rearrange(prompt_lens, "b -> b 1")
    source = torch.where(in_prompt, columns, width + columns - rearrange(prompt_lens, "b -> b 1"))
    out = both.gather(1, source)
    return out[:, : int((prompt_lens + lengths).max())]


def check_sample_arguments(seq_len: int | None, max_new_tokens: int | None, num_samples: int, temperature: float):
    """The checks every generation backend makes on `sample`'s arguments."""
    if seq_len is None and max_new_tokens is None:
        raise ValueError("sample() needs seq_len (total length cap) or max_new_tokens (new-token cap)")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 is greedy), got {temperature}")


def token_budgets(net: nn.Module, rows: list[Tensor], seq_len: int | None, max_new_tokens: int | None) -> tuple[Tensor, Tensor]:
    """(prompt lengths, new-token budget) per row: `max_new_tokens`, capped by `seq_len` minus the prompt; an error
    when a row has no room or would pass the model's learned position table. Every generation backend uses it."""
    prompt_lens = torch.tensor([len(r) for r in rows])
    budget = torch.full_like(prompt_lens, max_new_tokens if max_new_tokens is not None else torch.iinfo(torch.long).max)
    if seq_len is not None:
        budget = budget.clamp(max=seq_len - prompt_lens)
    if (budget < 1).any():
        i = int((budget < 1).nonzero()[0, 0])
        raise ValueError(
            f"prompt {i} has {len(rows[i])} tokens: no room for a new token under seq_len={seq_len}"
            f"{'' if max_new_tokens is None else f' and max_new_tokens={max_new_tokens}'}; raise seq_len or shorten the prompt"
        )
    limit = absolute_position_limit(net)
    if limit is not None and int((prompt_lens + budget).max()) > limit:
        # per row, not the padded batch width: each row's positions count from its own first token
        i = int((prompt_lens + budget).argmax())
        raise ValueError(
            f"prompt {i} ({len(rows[i])} tokens) plus up to {int(budget[i])} new tokens exceeds the model's max_seq_len "
            f"{limit} (learned absolute positions); pass seq_len <= {limit} or a smaller max_new_tokens"
        )
    return prompt_lens, budget


def _decode_loop(
    decoder: Decoder,
    logits: Tensor,
    budget: Tensor,
    temperature: float,
    filter_fn: Callable | None,
    filter_kwargs: dict,
    pad_id: int,
    eos_id: int | None,
    generator: torch.Generator | None,
    sharded_net: nn.Module | None = None,
) -> tuple[Tensor, Tensor]:
    """Sample until every row has finished: its EOS emitted or its budget used.
    Returns the tokens (b, steps), right-padded with `pad_id`, and each row's length (EOS included).

    `sharded_net`: the model when it is sharded. The stop check is then an all-reduce over ranks, and a rank whose
    rows are done runs idle forwards (not decoder steps: its cache need not grow) until every rank is done."""
    batch, device = logits.shape[0], logits.device
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    lengths = torch.zeros(batch, dtype=torch.long, device=device)
    tokens = []
    max_steps = int(budget.max())
    # "has every row emitted its EOS?" is a host sync, which stalls a GPU while the host queues the next step: asked
    # every few steps (the steps past the last EOS are trimmed below), every step when ranks must agree each step.
    # Without an EOS only the budgets end rows, and the host knows them.
    check_every = STOP_CHECK_EVERY if sharded_net is None else 1
    done = False
    for step in itertools.count():
        if not done:
            sampled = _pick(logits.float(), temperature, filter_fn, filter_kwargs, generator)
            tokens.append(sampled.masked_fill(finished, pad_id))
            lengths += ~finished
            finished |= budget <= step + 1
            if eos_id is not None:
                finished |= sampled == eos_id
            done = step + 1 == max_steps or (
                eos_id is not None and (step + 1) % check_every == 0 and bool(finished.all()))
        if sharded_net is None and done:
            break
        if sharded_net is not None and all_ranks_done(done, device):
            break
        if done:
            idle_forward(sharded_net)
        else:
            # finished rows are fed their (discarded) sample, always a valid id, unlike pad_id
            logits = decoder.step(sampled)
    return torch.stack(tokens, dim=-1)[:, : int(lengths.max())], lengths


def _prefill(decoder: Decoder, ids: Tensor, seq_start_pos: Tensor, prefix_len: int) -> Tensor:
    # a decoder made before prefix sharing (a model's own `make_decoder`) gets the whole rows: the same result
    if prefix_len and "prefix_len" in inspect.signature(decoder.prefill).parameters:
        return decoder.prefill(ids, seq_start_pos, prefix_len=prefix_len)
    return decoder.prefill(ids, seq_start_pos)


def _run_idle(net: nn.Module, device: torch.device):
    """A sharded model's rank with no rows: the prefill's forward, then one per step until every rank is done."""
    was_training = net.training
    net.eval()
    try:
        idle_forward(net)
        while not all_ranks_done(True, device):
            idle_forward(net)
    finally:
        net.train(was_training)


def _pick(logits: Tensor, temperature: float, filter_fn, filter_kwargs: dict, generator) -> Tensor:
    if temperature == 0:
        return logits.argmax(dim=-1)
    # temperature first, then the filter, as transformers' generate and Meta's Llama code do: at T < 1 the
    # nucleus of the sharpened distribution is smaller than that of the raw logits
    logits = logits / temperature
    if filter_fn is not None:
        logits = filter_fn(logits, **filter_kwargs)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)[:, 0]


# a generating stage without an EOS id: said once per process, by the orchestrator or a trainer used alone

MISSING_EOS = (
    "eos_id is None but {where} generates text: without it every generated answer runs on to its full token budget "
    "({budget}), past the end of the answer, and the judge and the preference pairs see that text. Pass eos_id "
    "(the tokenizer's end-of-sequence id; `hf_tokenizer_functions` returns it)."
)

_warned_missing_eos = False


def warn_missing_eos(where: str, budget: str):
    """Warn, once per process, that generation runs without an EOS id."""
    global _warned_missing_eos
    if not _warned_missing_eos:
        _warned_missing_eos = True
        warnings.warn(MISSING_EOS.format(where=where, budget=budget), UserWarning, stacklevel=4)
