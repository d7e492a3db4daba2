"""Fully sharded models (FSDP2, `torch.distributed.fsdp.fully_shard`): what changes when a model is sharded.

A sharded model all-gathers its parameters in every forward, which is a collective: every rank must run the same
number of forwards, whatever its own batch holds. So, only when the model is sharded,
- the sampler's stop check is an all-reduce, and a rank whose rows are finished keeps running forwards (one-token
  idle forwards) until every rank is done, as HF's `synced_gpus` does;
- callers that split work across ranks (pair generation, the judge, SPIN, reference log-probs) run as many sampler
  calls and forwards as the busiest rank, a rank with nothing left calling them with no rows;
- training prepares the optimizer and data but not the model (wrapping it in DDP would be wrong: FSDP2 reduces
  gradients itself), and checkpoints gather the full state dict, so they load into an unsharded model.

A model is sharded by Accelerate (`FullyShardedDataParallelPlugin(fsdp_version=2)`, which Accelerate applies on GPU
only) or directly with `fully_shard_model` (any device, e.g. CPU with gloo). DeepSpeed ZeRO-3 is not supported.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import DistributedType, extract_model_from_parallel
from torch import Tensor, nn


def is_fully_sharded(model: nn.Module) -> bool:
    """Whether `model` (or a module in it) is sharded by FSDP2's `fully_shard`."""
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(module, FSDPModule) for module in model.modules())


def fully_shard_model(model: nn.Module, mesh=None, **fully_shard_kwargs) -> nn.Module:
    """Shard `model` in place with FSDP2 over all ranks (the process group must exist, e.g. `Accelerator()` made
    first): each transformer block its own unit, then the root. Blocks found: x-transformers' `attn_layers.layers`,
    the `layers` of a HuggingFace model (`HFCausalLM`). Returns `model`."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if mesh is None:
        mesh = init_device_mesh(next(model.parameters()).device.type, (dist.get_world_size(),))
    for block in _blocks(model):
        fully_shard(block, mesh=mesh, **fully_shard_kwargs)
    fully_shard(model, mesh=mesh, **fully_shard_kwargs)
    return model


def _blocks(model: nn.Module) -> list[nn.Module]:
    attn_layers = getattr(model, "attn_layers", None)  # x-transformers' TransformerWrapper
    if attn_layers is not None and hasattr(attn_layers, "layers"):
        # each entry is ModuleList([norms, block, residual]): a ModuleList never runs forward (FSDP's hooks), the block does
        return [entry[1] for entry in attn_layers.layers]
    hf_model = getattr(model, "model", None)  # HFCausalLM -> e.g. LlamaForCausalLM -> LlamaModel.layers
    inner = getattr(hf_model, "model", None) or getattr(hf_model, "transformer", None)
    layers = getattr(inner, "layers", None) or getattr(inner, "h", None)
    return list(layers) if layers is not None else []


def max_over_ranks(count: int, model: nn.Module) -> int:
    """The largest `count` over all ranks when `model` is sharded (each rank must then run that many calls), else `count`."""
    if not is_fully_sharded(model):
        return count
    value = torch.tensor(count, device=_device(model))
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return int(value)


def all_ranks_done(done: bool, device: torch.device) -> bool:
    """True when `done` is True on every rank (one all-reduce)."""
    value = torch.tensor(int(done), device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value)


def idle_forward(model: nn.Module):
    """One forward on a single token, output discarded: a rank with nothing to compute takes part in the parameter
    all-gathers of the other ranks' forward (every FSDP unit runs once, whatever the input's size)."""
    model(torch.zeros(1, 1, dtype=torch.long, device=_device(model)))


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def full_state_dict(accelerator: Accelerator, model: nn.Module) -> dict[str, Tensor]:
    """The model's weights as plain tensors, gathered from every rank when it is sharded (collective: every process
    calls it); for a sharded model only the main process receives them, on CPU."""
    unwrapped = extract_model_from_parallel(model)
    if not is_fully_sharded(unwrapped):
        return accelerator.get_state_dict(model)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(unwrapped, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state_dict(model: nn.Module, state_dict: dict[str, Tensor], strict: bool = True):
    """Load plain (full) weights into `model`, sharding them when the model is sharded."""
    unwrapped = extract_model_from_parallel(model)
    if not is_fully_sharded(unwrapped):
        unwrapped.load_state_dict(state_dict, strict=strict)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(unwrapped, state_dict, options=StateDictOptions(full_state_dict=True, strict=strict))


def reshard(model: nn.Module):
    """Put a sharded model's sharded parameters back in place. FSDP2 keeps the root's gathered (plain) parameters
    registered after a forward (the root is not resharded after forward), so an optimizer built then would hold
    those instead of the shards that training updates."""
    from torch.distributed.fsdp import FSDPModule

    for module in extract_model_from_parallel(model).modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def full_optimizer_state_dict(model: nn.Module, optimizer) -> dict:
    """The optimizer's state; for a sharded model gathered into full tensors (collective; every process calls it)."""
    unwrapped = extract_model_from_parallel(model)
    if not is_fully_sharded(unwrapped):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(unwrapped, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_optimizer_state_dict(model: nn.Module, optimizer, state: dict):
    """Load a state from `full_optimizer_state_dict` (every process, the same full state), sharding it when needed."""
    unwrapped = extract_model_from_parallel(model)
    if not is_fully_sharded(unwrapped):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(unwrapped, optimizer, state, options=StateDictOptions(full_state_dict=True))


def local_weights(model: nn.Module) -> dict[str, Tensor]:
    """The model's state dict with each sharded tensor as this rank's shard (no communication)."""
    return {name: t.to_local() if hasattr(t, "to_local") else t for name, t in extract_model_from_parallel(model).state_dict().items()}


def same_on_every_rank(value: str, model: nn.Module) -> str:
    """`value` when the model is not sharded; else the values of all ranks joined (collective): a description of a
    sharded model's weights that every rank agrees on."""
    if not is_fully_sharded(extract_model_from_parallel(model)):
        return value
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return "/".join(values)


def prepare_for_training(accelerator: Accelerator, model: nn.Module, *others):
    """`accelerator.prepare(model, *others)`, except that a model sharded directly (Accelerate not in FSDP mode) is
    left as it is: Accelerate would wrap it in DDP, whose gradient all-reduce FSDP2 already does."""
    if is_fully_sharded(model) and accelerator.distributed_type != DistributedType.FSDP:
        return (model, *accelerator.prepare(*others))
    return accelerator.prepare(model, *others)


def place_on_device(accelerator: Accelerator, model: nn.Module) -> nn.Module:
    """Move `model` to the accelerator's device now, as `accelerator.prepare` does when a stage first trains: a plan
    may generate before anything trains (a first stage that makes pairs or SPIN answers, a resumed run), and on the
    host a GPU run would generate slowly and draw other samples than an uninterrupted run. Left where it is, as
    prepare leaves it: a sharded model, a model dispatched over devices (`hf_device_map`), device_placement=False."""
    if (is_fully_sharded(model) or not accelerator.device_placement or accelerator.distributed_type == DistributedType.FSDP
            or accelerator.verify_device_map(model)):
        return model
    return model.to(accelerator.device)


def check_supported_sharding(accelerator: Accelerator, where: str):
    """Refuse DeepSpeed ZeRO-3 at construction: its sharded generation is not implemented (and not testable here)."""
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if getattr(plugin, "zero_stage", None) == 3:
        raise NotImplementedError(
            f"{where}: DeepSpeed ZeRO-3 is not supported (its sharded generation is not implemented or tested). "
            f"Shard the model with FSDP2 instead: Accelerate's FullyShardedDataParallelPlugin(fsdp_version=2), or "
            f"self_rewarding_lm_pytorch.models.sharding.fully_shard_model(model)"
        )
