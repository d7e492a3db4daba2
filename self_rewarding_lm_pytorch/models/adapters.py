"""LoRA (any peft adapter) on the policy: only the adapters train, and the reference is the same model with its
adapters off (optional extra: `pip install -e ".[peft]"` from the checkout).

    from peft import LoraConfig, get_peft_model
    model = HFCausalLM(get_peft_model(AutoModelForCausalLM.from_pretrained(path), LoraConfig(r=16, ...)))

peft freezes the base weights and the optimizers take trainable parameters only. DPO's live reference and the
reference log-probs that pair generation and SPIN store are both the base model with the adapters disabled, so no
second copy of the weights is held and the two kinds of reference agree (as TRL does with a peft model). Checkpoints
hold the trainable (adapter) weights only; `HFCausalLM.save_merged(path)` writes one merged HF model.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

from accelerate.utils import extract_model_from_parallel
from torch import Tensor, nn

from self_rewarding_lm_pytorch.models.utils import frozen_copy


def adapter_model(model: nn.Module) -> nn.Module | None:
    """The peft model inside `model` (through DDP and the HF wrapper), or None when it has no adapters."""
    for module in extract_model_from_parallel(model).modules():
        if hasattr(module, "disable_adapter") and hasattr(module, "peft_config"):
            return module
    return None


@contextmanager
def adapters_disabled(model: nn.Module):
    """Within the block `model` computes as its base model; a model without adapters is unchanged."""
    peft_model = adapter_model(model)
    with peft_model.disable_adapter() if peft_model is not None else nullcontext():
        yield


class AdaptersOff(nn.Module):
    """The policy with its adapters disabled and in eval mode: DPO's reference without a copy of the weights.

    The policy is held outside the module tree, so the reference's `eval()` or `requires_grad_(False)` never
    reaches the policy, and its parameters are not counted twice."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.__dict__["policy"] = policy

    def forward(self, *args, **kwargs) -> Tensor:
        was_training = self.policy.training
        self.policy.eval()  # the reference never drops out
        try:
            with adapters_disabled(self.policy):
                return self.policy(*args, **kwargs)
        finally:
            self.policy.train(was_training)


def reference_model(model: nn.Module) -> nn.Module:
    """DPO's live reference for `model` as it is now: its adapters off when it has any, else a frozen copy."""
    model = extract_model_from_parallel(model)
    return AdaptersOff(model) if adapter_model(model) is not None else frozen_copy(model)


def trainable_names(model: nn.Module) -> set[str]:
    """Names (as in `state_dict`) of the parameters that train."""
    return {name for name, p in extract_model_from_parallel(model).named_parameters() if p.requires_grad}
