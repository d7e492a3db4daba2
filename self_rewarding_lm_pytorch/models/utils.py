"""Small operations on the policy model that several stages need."""

from __future__ import annotations

import copy

from torch import nn


def set_dropout(model: nn.Module, p: float):
    """Set every dropout rate in `model` to `p`: nn.Dropout modules, and x-transformers' attention, whose
    fused attention path reads a float `dropout` attribute besides its nn.Dropout."""
    from x_transformers.attend import Attend

    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p
        if isinstance(module, Attend):
            module.dropout = p


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` in eval mode with gradients off: the reference policy of DPO, the opponent of SPIN."""
    reference = copy.deepcopy(model)
    reference.eval()
    reference.requires_grad_(False)
    return reference
