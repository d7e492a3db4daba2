"""HuggingFace causal LMs and tokenizers as the policy (optional extra: `pip install -e ".[hf]"` from the checkout).

    model = HFCausalLM(AutoModelForCausalLM.from_pretrained(path))
    encode, decode, eos_id = hf_tokenizer_functions(AutoTokenizer.from_pretrained(path))
    # an instruct model: prompts (task and judge) rendered as a user turn of its chat template
    encode, decode, eos_id = hf_tokenizer_functions(tokenizer, chat_template=True, system_prompt="...")

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

    def save_merged(self, path: str | Path, **kwargs):
        """Merge the LoRA adapters into the weights and save one plain HF model (loadable by
        `AutoModelForCausalLM.from_pretrained`, no peft needed). The merge is in place: afterwards this wrapper
        holds the merged model, without adapters."""
        from self_rewarding_lm_pytorch.models.adapters import adapter_model

        if adapter_model(self.model) is None:
            raise ValueError("save_merged: the model has no adapters to merge; use save_pretrained")
        self.model = self.model.merge_and_unload()
        self.model.save_pretrained(path, **kwargs)


class HFKVDecoder:
    """The sampler's decoder for an HF model: its cache, an attention mask and explicit position ids."""

    def __init__(self, wrapper: HFCausalLM, position_limit: int | None):
        self.wrapper = wrapper
        self.position_limit = position_limit
        # transformers 5 names the cache argument `cache`; 4.x names it `past_key_values`. A peft model's forward
        # takes **kwargs and passes them on: read the names from the model it wraps
        model = wrapper.model
        forward = model.get_base_model().forward if hasattr(model, "get_base_model") else model.forward
        parameters = inspect.signature(forward).parameters
        self.cache_argument = "cache" if "cache" in parameters else "past_key_values"
        # only the last position's logits are read: a model that can skip the others (transformers >= 4.45) never
        # builds the (rows, prompt length, vocabulary) logits of a prefill, the largest tensor of a long-prompt batch
        self.last_logits_only = {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}

    def _run(self, ids: Tensor, positions: Tensor, cache=None) -> Tensor:
        if self.position_limit is not None:
            # only finished rows (their output is discarded) can pass the limit: keep them inside the table
            positions = positions.clamp(max=self.position_limit - 1)
        out = self.wrapper(ids, self.mask, position_ids=positions, use_cache=True, **{self.cache_argument: cache},
                           **self.last_logits_only)
        self.cache = out[self.cache_argument]
        return out.logits[:, -1]

    def prefill(self, ids: Tensor, seq_start_pos: Tensor, prefix_len: int = 0) -> Tensor:
        mask = torch.arange(ids.shape[1], device=ids.device)[None, :] >= seq_start_pos[:, None]
        positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)
        self.next_position = positions[:, -1] + 1
        if prefix_len > 0:
            # 1) the prefix once, for one row; 2) its cache shifted into every row (keys were computed at each row's
            # own position ids, so they fit any row); 3) the rest of the rows. A cache of another kind: no sharing.
            from self_rewarding_lm_pytorch.models.decoders import shared_prefix

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
    """Place one row's cached prefix in every row (see models/decoders.py); False for a cache this does not know how to
    shift (anything but full key / value tensors per layer: transformers 5 `layers`, 4.x `key_cache` lists)."""
    from self_rewarding_lm_pytorch.models.decoders import expand_prefix_cache

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


def hf_tokenizer_functions(
    tokenizer,
    add_special_tokens: bool = False,
    *,
    chat_template: bool = False,
    system_prompt: str | None = None,
) -> tuple[Callable[[str], Tensor], Callable[[Tensor], str], int | None]:
    """(tokenizer_encode, tokenizer_decode, eos_id) for the trainers, from an HF tokenizer.

    `chat_template=True`: `encode(text)` is `tokenizer.apply_chat_template` of a user turn holding `text` (after
    a system turn with `system_prompt`, if given) and the assistant's header, so the model answers as the
    assistant; the trainer encodes task prompts and judge prompts alike this way. `eos_id` is then the token
    that ends the assistant's turn in the template (found by rendering one), and decoding keeps the reply only.

    The library pads with -1 (never a real token), so the tokenizer's pad token, often equal to its EOS, is not
    used. Decoding drops padding and special tokens, and stops at the first EOS (or end of turn)."""
    template = ChatTemplate(tokenizer, system_prompt=system_prompt) if chat_template else None
    if system_prompt is not None and template is None:
        raise ValueError("hf_tokenizer_functions: system_prompt needs chat_template=True")
    eos_id = tokenizer.eos_token_id if template is None else template.end_of_turn_id
    stops = {i for i in (eos_id, tokenizer.eos_token_id) if i is not None}

    def encode(text: str) -> Tensor:
        if template is not None:
            return template.encode_prompt(text)
        return torch.tensor(tokenizer.encode(text, add_special_tokens=add_special_tokens), dtype=torch.long)

    def decode(tokens: Tensor) -> str:
        ids = [int(t) for t in torch.as_tensor(tokens).tolist() if int(t) >= 0]
        ends = [index for index, token in enumerate(ids) if token in stops]
        if ends:
            ids = ids[: ends[0]]
        return tokenizer.decode(ids, skip_special_tokens=True)

    return encode, decode, eos_id


class ChatTemplate:
    """Prompts and training examples rendered with an HF tokenizer's chat template (`apply_chat_template`).

    `encode_prompt(text)`: the conversation so far (optional system turn, the user's `text`) and the assistant's
    header, as token ids. `encode_example(messages)`: a conversation ending in the assistant's reply, as
    `(ids, prompt_len)` for SFT: the reply (and its end-of-turn token) is what trains."""

    def __init__(self, tokenizer, system_prompt: str | None = None):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "the tokenizer has no chat_template: use hf_tokenizer_functions(tokenizer) without chat_template=True, "
                "or set tokenizer.chat_template to the model's Jinja template"
            )
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.end_of_turn_id = self._end_of_turn_id()

    def messages(self, user: str) -> list[dict]:
        system = [] if self.system_prompt is None else [dict(role="system", content=self.system_prompt)]
        return system + [dict(role="user", content=user)]

    def render(self, messages: list[dict], add_generation_prompt: bool) -> list[int]:
        encoded = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=True
        )
        return list(encoded["input_ids"])

    def encode_prompt(self, text: str) -> Tensor:
        return torch.tensor(self.render(self.messages(text), add_generation_prompt=True), dtype=torch.long)

    def encode_example(self, messages: list[dict]) -> tuple[Tensor, int]:
        """`messages` ends with the assistant's reply; a system turn is added first when this template has a
        system prompt and the conversation has none."""
        if not messages or messages[-1].get("role") != "assistant":
            raise ValueError("a chat training example must end with an assistant message (the reply that trains)")
        if self.system_prompt is not None and messages[0].get("role") != "system":
            messages = [dict(role="system", content=self.system_prompt)] + list(messages)
        prompt = self.render(messages[:-1], add_generation_prompt=True)
        full = self.render(messages, add_generation_prompt=False)
        if full[: len(prompt)] != prompt or len(full) == len(prompt):
            raise ValueError(
                "the chat template renders the conversation without its last reply differently from the start of the "
                "whole conversation, so the reply's tokens cannot be told apart; this template cannot be used for SFT"
            )
        # the example ends with the reply's end-of-turn token: what a template writes after it (e.g. ChatML's "\n")
        # is never generated (sampling stops at the end of turn), so it does not train
        end = getattr(self, "end_of_turn_id", None)  # None while `_end_of_turn_id` finds it
        if end is not None and end in full[len(prompt):]:
            full = full[: full.index(end, len(prompt)) + 1]
        return torch.tensor(full, dtype=torch.long), len(prompt)

    def _end_of_turn_id(self) -> int | None:
        """The first special token after an assistant reply in the template (e.g. <|im_end|>, <|eot_id|>)."""
        marker = "0"
        ids, prompt_len = self.encode_example([dict(role="user", content=marker), dict(role="assistant", content=marker)])
        special = set(self.tokenizer.all_special_ids)
        after = [int(t) for t in ids[prompt_len:] if int(t) in special]
        return after[0] if after else self.tokenizer.eos_token_id
