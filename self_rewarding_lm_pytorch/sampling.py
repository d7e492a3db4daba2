"""Batched sampling: left-padded prompts, KV cache, per-row EOS and length caps, filters, a seeded generator.

    responses = sample(model, [prompt_a, prompt_b], seq_len=64, temperature=0.7, filter_fn=top_p, eos_id=0)

Each step reads the logits at the last position (they predict the next token), samples one token for every
row at once, and stops when every row has produced its EOS or reached its cap. Models plug in through a small
`Decoder` protocol: x-transformers' `TransformerWrapper` gets a KV-cached decoder, a model that defines
`make_decoder()` brings its own (the HuggingFace adapter does), any other Module is re-run on the whole
sequence each step.
"""

from __future__ import annotations

import math
from typing import Callable, Protocol, Sequence

import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel
from einops import repeat
from torch import Tensor, nn

from self_rewarding_lm_pytorch.data import as_token_tensor, strip_right_padding
from self_rewarding_lm_pytorch.model_contract import forward_logits

# filters: logits (b, vocab) -> logits with the excluded tokens at -inf


def top_k(logits: Tensor, frac_num_tokens: float = 0.1, k: int | None = None) -> Tensor:
    """Keep the k most likely tokens (k given, or a fraction of the vocabulary)."""
    k = k if k is not None else max(1, math.ceil(frac_num_tokens * logits.shape[-1]))
    k = min(k, logits.shape[-1])
    kth_largest = logits.topk(k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth_largest, -math.inf)


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


# decoders: how a model produces next-token logits


class Decoder(Protocol):
    def prefill(self, ids: Tensor, seq_start_pos: Tensor) -> Tensor:
        """`ids` (b, n) left-padded, row i's real tokens from `seq_start_pos[i]`; returns next-token logits (b, vocab)."""

    def step(self, new_ids: Tensor) -> Tensor:
        """Append `new_ids` (b,) to every row; returns next-token logits (b, vocab)."""

    def repeat(self, n: int) -> None:
        """Repeat every row n times in place (row i becomes rows i*n .. i*n+n-1), keeping what was prefilled."""


def absolute_position_limit(net: nn.Module) -> int | None:
    """The longest sequence a model with learned absolute positions can embed (x-transformers, or a model
    declaring `position_limit`, like the HF adapter), else None."""
    from x_transformers.x_transformers import AbsolutePositionalEmbedding

    if hasattr(net, "position_limit"):
        return net.position_limit

    pos_emb = getattr(net, "pos_emb", None)
    return pos_emb.max_seq_len if isinstance(pos_emb, AbsolutePositionalEmbedding) else None


class XTransformersKVDecoder:
    """x-transformers' own KV cache. Left padding needs `seq_start_pos` on every call (prefill and each step),
    and steps feed only the new token with `input_not_include_cache=True` (see docs: platform facts)."""

    def __init__(self, net: nn.Module):
        self.net = net
        self.position_limit = absolute_position_limit(net)

    def _logits(self, ids: Tensor, **kwargs) -> Tensor:
        logits, self.cache = self.net(ids, return_intermediates=True, seq_start_pos=self.seq_start_pos, **kwargs)
        return logits[:, -1]

    def prefill(self, ids: Tensor, seq_start_pos: Tensor) -> Tensor:
        # prompts of one length need no left-pad mask: attention then keeps its unmasked causal path. (Their rows also
        # share one length cap, so no row can outrun the position table while another still generates.)
        self.seq_start_pos = seq_start_pos if bool(seq_start_pos.any()) else None
        self.length = ids.shape[1]
        return self._logits(ids)

    def step(self, new_ids: Tensor) -> Tensor:
        if self.position_limit is not None and self.seq_start_pos is not None:
            # rows past their own cap are finished, and their output is discarded; moving their start keeps their
            # (unused) position inside the embedding table. A row still generating is never moved: its cap fits.
            self.seq_start_pos = self.seq_start_pos.clamp(min=self.length - self.position_limit + 1)
        self.length += 1
        return self._logits(new_ids[:, None], cache=self.cache, input_not_include_cache=True)

    def repeat(self, n: int):
        from x_transformers.autoregressive_wrapper import modify_cached_kv

        modify_cached_kv(self.cache, lambda t: repeat(t, "b ... -> (b n) ...", n=n))
        if self.seq_start_pos is not None:
            self.seq_start_pos = repeat(self.seq_start_pos, "b -> (b n)", n=n)


class RecomputeDecoder:
    """Any causal Module, re-run on the whole sequence every step (no cache).

    Rows are kept right-padded (each starts at position 0) and each row's logits are read at its own last
    token: a causal model's output there cannot depend on the padding after it, so this is exact for any
    model, whatever its position scheme, with no attention mask."""

    def __init__(self, net: nn.Module):
        self.net = net
        self.position_limit = absolute_position_limit(net)

    def prefill(self, ids: Tensor, seq_start_pos: Tensor) -> Tensor:
        width = ids.shape[1]
        self.lengths = width - seq_start_pos
        # left-aligned copy: shift each row left by its start
        columns = (torch.arange(width, device=ids.device)[None, :] + seq_start_pos[:, None]).clamp(max=width - 1)
        self.ids = ids.gather(1, columns)
        return self._logits()

    def _logits(self) -> Tensor:
        width = int(self.lengths.max())
        logits = forward_logits(self.net, self.ids[:, :width].clamp(min=0))
        return logits[torch.arange(len(logits), device=logits.device), self.lengths - 1]

    def step(self, new_ids: Tensor) -> Tensor:
        position = self.lengths
        if self.position_limit is not None:
            # only finished rows (output discarded) can reach the limit: they overwrite their last slot
            position = position.clamp(max=self.position_limit - 1)
        if int(position.max()) >= self.ids.shape[1]:
            self.ids = F.pad(self.ids, (0, 1), value=0)
        self.ids[torch.arange(len(self.ids), device=self.ids.device), position] = new_ids
        self.lengths = position + 1
        return self._logits()

    def repeat(self, n: int):
        self.ids = repeat(self.ids, "b n -> (b r) n", r=n)
        self.lengths = repeat(self.lengths, "b -> (b r)", r=n)


def make_decoder(net: nn.Module, cache_kv: bool = True) -> Decoder:
    """The decoder for `net`: its own `make_decoder()` if it has one, x-transformers' KV cache for a
    `TransformerWrapper`, otherwise full recompute."""
    from x_transformers import TransformerWrapper

    if cache_kv and hasattr(net, "make_decoder"):
        return net.make_decoder()
    if cache_kv and isinstance(net, TransformerWrapper):
        return XTransformersKVDecoder(net)
    return RecomputeDecoder(net)


def _as_prompt_list(prompts: Tensor | Sequence[Tensor], pad_id: int) -> list[Tensor]:
    if torch.is_tensor(prompts):
        if prompts.ndim == 1:
            prompts = prompts[None]
        if prompts.ndim != 2:
            raise ValueError(f"prompts must be a list of 1-D tensors or a 2-D tensor, got shape {tuple(prompts.shape)}")
        rows = [strip_right_padding(as_token_tensor(row, f"prompt {i}"), pad_id, f"prompt {i}") for i, row in enumerate(prompts)]
    else:
        rows = [as_token_tensor(p, f"prompt {i}") for i, p in enumerate(prompts)]
    if not rows:
        raise ValueError("sample() got no prompts")
    for i, row in enumerate(rows):
        if len(row) == 0:
            raise ValueError(f"prompt {i} is empty: every row needs at least one token to condition on")
    return rows


def _make_generator(generator: torch.Generator | int | None, device: torch.device) -> torch.Generator | None:
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    return torch.Generator(device=device).manual_seed(int(generator))


@torch.no_grad()
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
) -> Tensor:
    """Continue every prompt, all rows in one batch.

    prompts: a list of 1-D token tensors (any lengths) or a 2-D tensor right-padded with `pad_id`.
    seq_len: cap on each row's total length, prompt included; max_new_tokens: cap on new tokens; at least one.
    temperature: 0 is greedy. filter_fn: e.g. `top_p`, `top_k`, `min_p`, called as filter_fn(logits, **filter_kwargs).
    eos_id: a row stops after its EOS (kept in the output). num_samples: continuations per prompt; the prompt is
    prefilled once. generator: a torch.Generator or an int seed, for reproducible sampling.

    Returns (num_prompts * num_samples, L) token ids, prompt-major (row i * num_samples + j is prompt i's j-th
    sample), right-padded with `pad_id`: the responses, or each prompt followed by its response if
    `output_keep_prompt`.
    """
    rows = _as_prompt_list(prompts, pad_id)
    if seq_len is None and max_new_tokens is None:
        raise ValueError("sample() needs seq_len (total length cap) or max_new_tokens (new-token cap)")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 is greedy), got {temperature}")

    net = extract_model_from_parallel(net)
    device = next(net.parameters()).device
    prompt_lens = torch.tensor([len(r) for r in rows], device=device)

    # 1) how many tokens each row may add
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
        i = int((prompt_lens + budget).argmax())
        raise ValueError(
            f"prompt {i} ({len(rows[i])} tokens) plus up to {int(budget[i])} new tokens exceeds the model's max_seq_len "
            f"{limit} (learned absolute positions); pass seq_len <= {limit} or a smaller max_new_tokens"
        )

    # 2) left-align the prompts, prefill once, then repeat the cache for each sample
    width = int(prompt_lens.max())
    ids = torch.zeros(len(rows), width, dtype=torch.long, device=device)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = row.to(device)
    seq_start_pos = width - prompt_lens

    was_training = net.training
    net.eval()
    try:
        decoder = make_decoder(net, cache_kv)
        logits = decoder.prefill(ids, seq_start_pos)
        if num_samples > 1:
            decoder.repeat(num_samples)
            logits = repeat(logits, "b v -> (b n) v", n=num_samples)
            budget = repeat(budget, "b -> (b n)", n=num_samples)
        generated = _decode_loop(decoder, logits, budget, temperature, filter_fn, filter_kwargs or {}, pad_id, eos_id,
                                 _make_generator(generator, device))
    finally:
        net.train(was_training)

    if not output_keep_prompt:
        return generated
    # each prompt followed by its response, right-padded
    lengths = (generated != pad_id).sum(-1)
    prompts_rep = [row for row in rows for _ in range(num_samples)]
    out = torch.full((len(prompts_rep), width + generated.shape[1]), pad_id, dtype=torch.long, device=device)
    for i, row in enumerate(prompts_rep):
        out[i, : len(row)] = row.to(device)
        out[i, len(row) : len(row) + lengths[i]] = generated[i, : lengths[i]]
    return out[:, : int((prompt_lens.repeat_interleave(num_samples) + lengths).max())]


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
) -> Tensor:
    """Sample until every row has finished: its EOS emitted or its budget used. Returns (b, steps) right-padded."""
    batch, device = logits.shape[0], logits.device
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    tokens = []
    max_steps = int(budget.max())
    for step in range(max_steps):
        token = _pick(logits.float(), temperature, filter_fn, filter_kwargs, generator)
        token = token.masked_fill(finished, pad_id)
        tokens.append(token)
        finished |= budget <= step + 1
        if eos_id is not None:
            finished |= token == eos_id
        if step + 1 == max_steps or bool(finished.all()):  # the one host sync per token
            break
        logits = decoder.step(token.clamp(min=0))
    return torch.stack(tokens, dim=-1)


def _pick(logits: Tensor, temperature: float, filter_fn, filter_kwargs: dict, generator) -> Tensor:
    if temperature == 0:
        return logits.argmax(dim=-1)
    if filter_fn is not None:
        logits = filter_fn(logits, **filter_kwargs)
    probs = (logits / temperature).softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]
