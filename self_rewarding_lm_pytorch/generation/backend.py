"""Generation backends: what every generating step (candidates, judgements, SPIN's opponent answers) calls.

    sampler = make_sampler("library")           # the default: `sample` (generation/sampling.py), on the training model itself
    sampler = make_sampler(VLLMConfig(...))     # vLLM (generation/vllm_backend.py), for HuggingFace models
    tokens = sampler(model, prompts, max_seq_len, temperature=0.7, filter_fn=top_p, eos_id=eos_id, num_samples=4)

A backend is a callable with `sample`'s contract (token ids in, token ids out, the same sampling settings and output
layout) that generates from `model` as it is at the call, plus `release()`: generation is over until the next call
(training runs now), so a backend may free the memory it holds. The trainers never ask which backend they hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from torch import Tensor, nn

from self_rewarding_lm_pytorch.generation.sampling import sample


class Sampler(Protocol):
    def __call__(self, net: nn.Module, prompts: Tensor | Sequence[Tensor], seq_len: int | None = None, *args,
                 **kwargs) -> Tensor:
        """`sample(net, prompts, seq_len, ...)`: the same arguments, the same result layout."""

    def release(self) -> None:
        """Generation is over until the next call: free what can be freed (a no-op where nothing is held)."""


class LibrarySampler:
    """The library's own sampler (`sample`): the training model's forward with a KV cache, nothing held between calls."""

    def __call__(self, net: nn.Module, prompts, seq_len: int | None = None, *args, **kwargs) -> Tensor:
        return sample(net, prompts, seq_len, *args, **kwargs)

    def release(self):
        pass

    def fingerprint(self) -> str:
        """What makes its draws (storage/fingerprint.py): the library's sampler."""
        return "library"

    def __repr__(self) -> str:
        return "LibrarySampler()"


GENERATION_BACKENDS = ("library", "vllm")


def make_sampler(backend, model: nn.Module | None = None, where: str = "generation_backend") -> Sampler:
    """The sampler for `backend`: "library" (the default), "vllm" (vLLM with default engine options), a
    `VLLMConfig`, or a sampler already made (anything with `sample`'s call and a `release()`; returned as it is, so
    that stages share one engine). `model`, when given, is checked now (vLLM runs HuggingFace models only), with
    `where` naming the setting in the error."""
    from self_rewarding_lm_pytorch.generation.vllm_backend import VLLMConfig, VLLMSampler, check_vllm_model

    if callable(backend) and callable(getattr(backend, "release", None)):  # a sampler already made
        if isinstance(backend, VLLMSampler) and model is not None:
            check_vllm_model(model, where)
        return backend
    if isinstance(backend, str):
        if backend not in GENERATION_BACKENDS:
            raise ValueError(f"{where}={backend!r} is unknown: use one of {GENERATION_BACKENDS}, or a VLLMConfig(...)")
        if backend == "library":
            return LibrarySampler()
        backend = VLLMConfig()
    if not isinstance(backend, VLLMConfig):
        raise TypeError(f"{where} must be 'library', 'vllm', a VLLMConfig or a sampler, got a {type(backend).__name__}")
    return VLLMSampler(backend, model=model, where=where)


def check_sampler_processes(sampler: Sampler, num_processes: int, where: str):
    """vLLM's engine serves one process here: several Accelerate processes would each build a whole engine."""
    from self_rewarding_lm_pytorch.generation.vllm_backend import VLLMSampler

    if isinstance(sampler, VLLMSampler) and num_processes > 1:
        raise ValueError(
            f"{where}: the vLLM backend runs in one process, but Accelerate runs {num_processes}. Launch one process "
            f"(vLLM's tensor_parallel_size spreads the engine over GPUs), or use generation_backend='library'"
        )
