"""The preference loss shared by DPO and SPIN: pure maths over per-sequence log-probabilities.

With h = (log π(y_c|x) - log π_ref(y_c|x)) - (log π(y_r|x) - log π_ref(y_r|x)), the log-ratio margin of the
chosen over the rejected response:

    sigmoid   -log σ(β h)                  DPO, Rafailov et al. 2023, eq. 7
              with label smoothing ε:  -(1 - ε) log σ(β h) - ε log σ(-β h)   (conservative DPO, cDPO)
    ipo       (h - 1 / (2β))²              IPO, Azar et al. 2023
    hinge     max(0, 1 - β h)              SLiC, Zhao et al. 2023

SPIN (Chen et al. 2024) is the sigmoid loss with (real, generated) as (chosen, rejected) and β = λ.

The loss takes whichever log-probs the caller reduces to (summed, or per token for IPO); the implicit rewards the
trainers log are β times the summed log-ratios for every loss type (training/dpo_objective.py), as TRL logs them.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from beartype import beartype
from jaxtyping import Float, jaxtyped
from torch import Tensor

LossType = Literal["sigmoid", "ipo", "hinge"]


def check_preference_loss_settings(beta: float, loss_type: str, label_smoothing: float, owner: str = "preference_loss"):
    """Raise ValueError for settings the loss cannot use; shared by the loss, `DPO` and `DPOConfig`."""
    if loss_type not in ("sigmoid", "ipo", "hinge"):
        raise ValueError(f"{owner}: loss_type must be 'sigmoid', 'ipo' or 'hinge', got {loss_type!r}")
    if not beta > 0:
        raise ValueError(f"{owner}: beta must be > 0, got {beta}")
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"{owner}: label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if label_smoothing > 0 and loss_type != "sigmoid":
        raise ValueError(f"{owner}: label_smoothing applies to loss_type 'sigmoid' only (cDPO), got loss_type {loss_type!r}")


@jaxtyped(typechecker=beartype)
def preference_loss(
    policy_chosen_logps: Float[Tensor, " b"],
    policy_rejected_logps: Float[Tensor, " b"],
    ref_chosen_logps: Float[Tensor, " b"],
    ref_rejected_logps: Float[Tensor, " b"],
    *,
    beta: float | int = 0.1,
    loss_type: LossType = "sigmoid",
    label_smoothing: float | int = 0.0,
) -> Float[Tensor, " b"]:
    """Per-pair losses.

    `label_smoothing` ε assumes a fraction ε of the preference labels are flipped (conservative DPO, Mitchell
    2023); sigmoid loss only. TRL's sigmoid loss no longer takes it (docs/differences.md).
    """
    check_preference_loss_settings(beta, loss_type, label_smoothing)

    h = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)

    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        # h uses whatever reduction the caller chose for the log-probs; TRL averages them per token for IPO, the form
        # IPO's authors reported results with (DPOConfig's default for IPO); with sums the target margin 1/(2β)
        # would be per sequence
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        losses = F.relu(1 - beta * h)
    return losses
