"""HuggingFace causal LMs and tokenizers as the policy (optional extra: `pip install "self-rewarding-lm-pytorch[hf]"`).

    model = HFCausalLM(AutoModelForCausalLM.from_pretrained(path))
    encode, decode, eos_id = hf_tokenizer_functions(AutoTokenizer.from_pretrained(path))

`HFCausalLM` maps token ids (b, n) to logits (b, n, vocab), the library's model contract, and brings its own
KV-cached decoder for `sample`: the model's cache (`past_key_values`) with an attention mask over the left padding and position ids
counted from each row's first real token, so greedy tokens equal HF `generate`'s.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn


class HFCausalLM(nn.Module):
    """An HF `AutoModelForCausalLM` behind the library's contract (its weights are `self.model`)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        if not hasattr(model, "config") or not hasattr(model, "generate"):
            raise TypeError(f"HFCausalLM wraps a HuggingFace causal LM (AutoModelForCausalLM), got {type(model).__name__}")
        self.model = model
        self.train(model.training)  # a new Module starts in train mode; keep the wrapped model's mode instead
        config = model.config
        self.max_seq_len = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        # learned absolute positions cannot go past their table; rotary models can, so they get no hard limit
        learned = any("wpe" in name or "embed_positions" in name for name, _ in model.named_modules())
        self.position_limit = self.max_seq_len if learned else None

    def forward(self, ids: Tensor, mask: Tensor | None = None, **model_kwargs):
        """Logits (b, n, vocab). Right-padded sequences need no mask: a causal model's scored positions never see
        the padding after them. `mask` (True = real token) may be given, e.g. by a reward model caller.

        `model_kwargs` (the KV-cached decoder's cache and position ids) go to the HF model, and its whole output
        comes back: the decoder calls this wrapper, not the HF model, so that a wrapper sharded as a whole (FSDP2)
        gathers its parameters."""
        attention_mask = None if mask is None else mask.long()
        if model_kwargs:
            return self.model(input_ids=ids, attention_mask=attention_mask, **model_kwargs)
        return self.model(input_ids=ids, attention_mask=attention_mask, use_cache=False).logits

    def make_decoder(self) -> HFKVDecoder:
        return HFKVDecoder(self, self.position_limit)

    def save_pretrained(self, path: str | Path, state_dict: dict | None = None, **kwargs):
        """Save in the HF format (config + safetensors), loadable by `AutoModelForCausalLM.from_pretrained`.
        `state_dict`: this wrapper's (keys `model.*`), e.g. gathered by Accelerate from a sharded model."""
        if state_dict is not None:
            state_dict = {k.removeprefix("model."): v for k, v in state_dict.items()}
        self.model.save_pretrained(path, state_dict=state_dict, **kwargs)


class HFKVDecoder:
    """The sampler's decoder for an HF model: its cache, an attention mask and explicit position ids."""

    def __init__(self, wrapper: HFCausalLM, position_limit: int | None):
        self.wrapper = wrapper
        self.position_limit = position_limit
        # transformers 5 names the cache argument `cache`; 4.x names it `past_key_values`
        parameters = inspect.signature(wrapper.model.forward).parameters
        self.cache_argument = "cache" if "cache" in parameters else "past_key_values"

    def _run(self, ids: Tensor, positions: Tensor, cache=None) -> Tensor:
        if self.position_limit is not None:
            # only finished rows (their output is discarded) can pass the limit: keep them inside the table
            positions = positions.clamp(max=self.position_limit - 1)
        out = self.wrapper(ids, self.mask, position_ids=positions, use_cache=True, **{self.cache_argument: cache})
        self.cache = out[self.cache_argument]
        return out.logits[:, -1]

    def prefill(self, ids: Tensor, seq_start_pos: Tensor, prefix_len: int = 0) -> Tensor:
        mask = torch.arange(ids.shape[1], device=ids.device)[None, :] >= seq_start_pos[:, None]
        positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)
        self.next_position = positions[:, -1] + 1
        if prefix_len > 0:
            # 1) the prefix once, for one row; 2) its cache shifted into every row (keys were computed at each row's
            # own position ids, so they fit any row); 3) the rest of the rows. A cache of another kind: no sharing.
            from self_rewarding_lm_pytorch.decoders import shared_prefix

            prefix = shared_prefix(ids, seq_start_pos, prefix_len)
            self.mask = torch.ones_like(prefix, dtype=torch.bool)
            self._run(prefix, torch.arange(prefix_len, device=ids.device)[None])
            if _expand_prefix_cache(self.cache, seq_start_pos):
                self.mask = mask
                return self._run(ids[:, prefix_len:], positions[:, prefix_len:], self.cache)
        self.mask = mask
        return self._run(ids, positions)

    def step(self, new_ids: Tensor) -> Tensor:
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.mask), 1)], dim=-1)
        positions = self.next_position[:, None]
        self.next_position = self.next_position + 1
        return self._run(new_ids[:, None], positions, self.cache)

    def repeat(self, n: int):
        self.cache.batch_repeat_interleave(n)
        self.mask = self.mask.repeat_interleave(n, dim=0)
        self.next_position = self.next_position.repeat_interleave(n, dim=0)


def _expand_prefix_cache(cache, seq_start_pos: Tensor) -> bool:
    """Place one row's cached prefix in every row (see decoders.py); False for a cache this does not know how to
    shift (anything but full key / value tensors per layer: transformers 5 `layers`, 4.x `key_cache` lists)."""
    from self_rewarding_lm_pytorch.decoders import expand_prefix_cache

    layers = getattr(cache, "layers", None)
    if layers is not None and all(type(layer).__name__ == "DynamicLayer" for layer in layers):
        for layer in layers:
            layer.keys, layer.values = (expand_prefix_cache(t, seq_start_pos) for t in (layer.keys, layer.values))
        return True
    if layers is None and isinstance(getattr(cache, "key_cache", None), list):
        cache.key_cache = [expand_prefix_cache(t, seq_start_pos) for t in cache.key_cache]
        cache.value_cache = [expand_prefix_cache(t, seq_start_pos) for t in cache.value_cache]
        return True
    return False


def hf_tokenizer_functions(tokenizer, add_special_tokens: bool = False) -> tuple[Callable[[str], Tensor], Callable[[Tensor], str], int | None]:
    """(tokenizer_encode, tokenizer_decode, eos_id) for the trainers, from an HF tokenizer.

    The library pads with -1 (never a real token), so the tokenizer's pad token, often equal to its EOS, is not
    used. Decoding drops padding and special tokens, and stops at the first EOS."""
    eos_id = tokenizer.eos_token_id

    def encode(text: str) -> Tensor:
        return torch.tensor(tokenizer.encode(text, add_special_tokens=add_special_tokens), dtype=torch.long)

    def decode(tokens: Tensor) -> str:
        ids = [int(t) for t in torch.as_tensor(tokens).tolist() if int(t) >= 0]
        if eos_id is not None and eos_id in ids:
            ids = ids[: ids.index(eos_id)]
        return tokenizer.decode(ids, skip_special_tokens=True)

    return encode, decode, eos_id
