"""Decoders: how the sampler gets next-token logits from a model family (the `Decoder` protocol).

x-transformers' `TransformerWrapper` gets a KV-cached decoder, a model that defines `make_decoder()` brings its own
(the HuggingFace adapter does), any other Module is re-run on the whole sequence each step.

A shared prefix (the judge template's text before the prompt, identical in every row) is computed once: the decoder
runs it for one row, then places its cached keys and values in every row (`expand_prefix_cache`) and runs only what
follows. Rows are left-padded, so row i's prefix starts at its own slot `seq_start_pos[i]`: its cache is the single
row's cache shifted right by that much. That is exact when a token's cached keys and values do not depend on its
slot, only on its position counted from the row's first real token (true of both caches here: x-transformers caches
keys before applying rotary embeddings, and counts absolute positions from `seq_start_pos`; the HF decoder passes
each row's own position ids). The last `seq_start_pos[i]` prefix tokens of row i fall after the first `len(prefix)`
slots and are recomputed with the rest of the row.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel
from einops import rearrange, repeat
from torch import Tensor, nn

from self_rewarding_lm_pytorch.models.contract import forward_logits


class Decoder(Protocol):
    """What `sample` needs from a model family. Rows stay aligned: every row takes one token per step (finished rows
    too, their output is discarded), so a backend keeps one shared length and never loops over rows."""

    def prefill(self, ids: Tensor, seq_start_pos: Tensor, prefix_len: int = 0) -> Tensor:
        """`ids` (b, n) left-padded, row i's real tokens from `seq_start_pos[i]`; returns next-token logits (b, vocab).
        `prefix_len`: the first `prefix_len` real tokens are the same in every row; a decoder may compute them once
        (one that cannot share ignores it: `ids` hold the whole rows, so the result is the same)."""

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


def expand_prefix_cache(t: Tensor, seq_start_pos: Tensor) -> Tensor:
    """One row's cached prefix (1, ..., P, d) (sequence on dim -2) -> (b, ..., P, d) for left-padded rows: slot j of
    row i holds prefix token j - seq_start_pos[i] (slots before the row's start hold token 0; they are masked)."""
    prefix_len = t.shape[-2]
    source = (torch.arange(prefix_len, device=t.device) - rearrange(seq_start_pos, "b -> b 1")).clamp(min=0)
    source = source.view(len(seq_start_pos), *([1] * (t.ndim - 3)), prefix_len, 1).expand(-1, *t.shape[1:-1], t.shape[-1])
    return t.expand(len(seq_start_pos), *t.shape[1:]).gather(-2, source)


def shared_prefix(ids: Tensor, seq_start_pos: Tensor, prefix_len: int) -> Tensor:
    """The prefix shared by every row, as one row (1, prefix_len), read from row 0."""
    start = int(seq_start_pos[0])
    return ids[:1, start : start + prefix_len]


class XTransformersKVDecoder:
    """x-transformers' own KV cache. Left padding needs `seq_start_pos` on every call (prefill and each step),
    and steps feed only the new token with `input_not_include_cache=True` (see docs: platform facts)."""

    def __init__(self, net: nn.Module):
        self.net = net
        self.position_limit = absolute_position_limit(net)

    def _logits(self, ids: Tensor, **kwargs) -> Tensor:
        logits, self.cache = self.net(ids, return_intermediates=True, seq_start_pos=self.seq_start_pos, **kwargs)
        return logits[:, -1]

    def prefill(self, ids: Tensor, seq_start_pos: Tensor, prefix_len: int = 0) -> Tensor:
        # prompts of one length need no left-pad mask: attention then keeps its unmasked causal path. (Their rows also
        # share one length cap, so no row can outrun the position table while another still generates.)
        self.seq_start_pos = seq_start_pos if bool(seq_start_pos.any()) else None
        self.length = ids.shape[1]  # the cache's padded length, shared by all rows
        if prefix_len == 0:
            return self._logits(ids)

        from x_transformers.autoregressive_wrapper import modify_cached_kv

        # 1) the prefix once, for one row (no padding); 2) its cache shifted into every row; 3) the rest of the rows
        _, self.cache = self.net(shared_prefix(ids, seq_start_pos, prefix_len), return_intermediates=True)
        modify_cached_kv(self.cache, lambda t: expand_prefix_cache(t, seq_start_pos))
        rest = ids[:, prefix_len:]
        return self._logits(rest, cache=self.cache, input_not_include_cache=True, cache_age=rest.shape[1])

    def step(self, new_ids: Tensor) -> Tensor:
        if self.position_limit is not None and self.seq_start_pos is not None:
            # the padded cache may be longer than the position table: each row's position is length - its start, and
            # only a finished row (output discarded) can pass the table; moving its start keeps it inside. A row still
            # generating is never moved: `sample` checked that its prompt + budget fits.
            self.seq_start_pos = self.seq_start_pos.clamp(min=self.length - self.position_limit + 1)
        self.length += 1
        return self._logits(rearrange(new_ids, "b -> b 1"), cache=self.cache, input_not_include_cache=True)

    def repeat(self, n: int):
        # x-transformers' own helper for beam search / caches: apply fn to every layer's cached (k, v)
        from x_transformers.autoregressive_wrapper import modify_cached_kv

        modify_cached_kv(self.cache, lambda t: repeat(t, "b ... -> (b n) ...", n=n))
        if self.seq_start_pos is not None:
            self.seq_start_pos = repeat(self.seq_start_pos, "b -> (b n)", n=n)


class RecomputeDecoder:
    """Any causal Module, re-run on the whole sequence every step (no cache, so nothing to share: `prefix_len` is
    ignored).

    Rows are kept left-aligned (each starts at position 0, padding after) and each row's logits are read at its own
    last token: a causal model's output there cannot depend on the padding after it, so this is exact for any model,
    whatever its position scheme, with no attention mask or `seq_start_pos`."""

    def __init__(self, net: nn.Module):
        self.net = net
        self.position_limit = absolute_position_limit(net)

    def prefill(self, ids: Tensor, seq_start_pos: Tensor, prefix_len: int = 0) -> Tensor:
        width = ids.shape[1]
        self.lengths = width - seq_start_pos
        self.width = width  # = max(lengths), tracked on the host so that steps never sync
        # shift each row left by its start
        columns = (torch.arange(width, device=ids.device) + rearrange(seq_start_pos, "b -> b 1")).clamp(max=width - 1)
        self.ids = ids.gather(1, columns)
        return self._logits()

    def _logits(self) -> Tensor:
        logits = forward_logits(self.net, self.ids[:, : self.width].clamp(min=0))
        return logits[torch.arange(len(logits), device=logits.device), self.lengths - 1]

    def step(self, new_ids: Tensor) -> Tensor:
        position, self.width = self.lengths, self.width + 1
        if self.position_limit is not None:
            # only finished rows (output discarded) can reach the limit: they overwrite their last slot
            position = position.clamp(max=self.position_limit - 1)
            self.width = min(self.width, self.position_limit)
        if self.width > self.ids.shape[1]:
            self.ids = F.pad(self.ids, (0, 1), value=0)
        self.ids[torch.arange(len(self.ids), device=self.ids.device), position] = new_ids
        self.lengths = position + 1
        return self._logits()

    def repeat(self, n: int):
        self.ids = repeat(self.ids, "b n -> (b r) n", r=n)
        self.lengths = repeat(self.lengths, "b -> (b r)", r=n)


def make_decoder(net: nn.Module, cache_kv: bool = True) -> Decoder:
    """The decoder for `net`: its own `make_decoder()` if it has one, x-transformers' KV cache for a
    `TransformerWrapper` that supports it, otherwise full recompute (`cache_kv=False` forces recompute)."""
    from x_transformers import TransformerWrapper

    net = extract_model_from_parallel(net, keep_torch_compile=False)  # as in `sample`
    if cache_kv and hasattr(net, "make_decoder"):
        return net.make_decoder()
    # memory tokens and recycling turn x-transformers' cache off (`can_cache_kv`)
    if cache_kv and isinstance(net, TransformerWrapper) and net.can_cache_kv:
        return XTransformersKVDecoder(net)
    return RecomputeDecoder(net)
