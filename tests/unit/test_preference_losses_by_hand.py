"""The DPO / SPIN loss and every logged metric, for each loss type, against values worked out by hand.

Three pairs, prompt [0], a policy whose next-token distribution is fixed (p(1) = 1/2, p(2) = 1/4, p(0) = p(3) = 1/8
from any context), so its summed log-probs are sums of log(1/2), log(1/4), log(1/8); the reference log-probs are
literals, stored with the pairs. The formulas are TRL's DPOTrainer's (1.16): the loss per loss type, and
`rewards/*` = β times the summed log-ratios, `logps/*` = the summed policy log-probs, whatever the loss's
reduction. Each case also pins its numbers as literals, so a change of convention is a visible change here.
"""

import math

import pytest
import torch
from torch import nn

from self_rewarding_lm_pytorch.training.dpo_objective import DPO
from self_rewarding_lm_pytorch.training.spin import SPIN


class FixedNextToken(nn.Module):
    """From any token: p(1) = 1/2, p(2) = 1/4, p(0) = p(3) = 1/8."""

    def forward(self, ids):
        return torch.tensor([1 / 8, 1 / 2, 1 / 4, 1 / 8]).log().expand(*ids.shape, 4)


L2, L4, L8 = math.log(1 / 2), math.log(1 / 4), math.log(1 / 8)

# responses after the prompt [0], right-padded with -1
CHOSEN = torch.tensor([[0, 1, 1, -1, -1], [0, 2, 1, 1, -1], [0, 1, 2, 2, 1]])
REJECTED = torch.tensor([[0, 3, -1], [0, 3, 3], [0, 2, -1]])
PROMPT_LEN = torch.tensor([1, 1, 1])
NC, NR = [2, 3, 4], [1, 2, 1]  # response lengths
PC = [L2 + L2, L4 + L2 + L2, L2 + L4 + L4 + L2]  # the policy's summed log-probs: [1, 1], [2, 1, 1], [1, 2, 2, 1]
PR = [L8, L8 + L8, L4]  # [3], [3, 3], [2]
RC, RR = [-1.3, -3.0, -5.0], [-2.0, -4.0, -1.0]  # the reference's summed log-probs


def log_sigmoid(x):
    return -math.log(1 + math.exp(-x))


def mean(values):
    return sum(values) / len(values)


def trl_metrics(beta):
    """TRL's logged metrics: from the summed log-probs, means over the pairs."""
    chosen = [beta * (PC[i] - RC[i]) for i in range(3)]
    rejected = [beta * (PR[i] - RR[i]) for i in range(3)]
    return {
        "rewards/chosen": mean(chosen),
        "rewards/rejected": mean(rejected),
        "rewards/accuracies": mean([float(chosen[i] > rejected[i]) for i in range(3)]),
        "rewards/margins": mean([chosen[i] - rejected[i] for i in range(3)]),
        "logps/chosen": mean(PC),
        "logps/rejected": mean(PR),
    }


def h_sum(i):
    """The log-ratio margin of pair i on summed log-probs."""
    return (PC[i] - RC[i]) - (PR[i] - RR[i])


def h_mean(i):
    """The same per token: each log-ratio divided by its response's length (IPO, TRL's `ipo`)."""
    return (PC[i] - RC[i]) / NC[i] - (PR[i] - RR[i]) / NR[i]


def run(objective, reduction="sum", **kwargs):
    per_token = reduction == "mean"
    ref_chosen = torch.tensor([RC[i] / NC[i] if per_token else RC[i] for i in range(3)])
    ref_rejected = torch.tensor([RR[i] / NR[i] if per_token else RR[i] for i in range(3)])
    loss, metrics = objective(CHOSEN, REJECTED, PROMPT_LEN, ref_chosen, ref_rejected, **kwargs)
    assert loss.item() == pytest.approx(metrics["loss"].item(), abs=1e-6)
    return {name: value.item() for name, value in metrics.items()}


def dpo(**kwargs):
    return DPO(FixedNextToken(), precomputed_reference=True, **kwargs)


# TRL's metrics at β 0.5 (every case but hinge's β 2 and SPIN's λ 0.1, which scale the rewards): pair 1's
# summed margin is -0.0069 (its chosen reward is below its rejected one), pairs 2 and 3's 0.386 and 1.227
METRICS_AT_HALF = {
    "rewards/chosen": 0.1637056, "rewards/rejected": -0.1041032, "rewards/accuracies": 2 / 3,
    "rewards/margins": 0.2678088, "logps/chosen": -2.7725887, "logps/rejected": -2.5415397,
}


def test_the_hand_values_are_the_ones_pinned_below():
    assert trl_metrics(0.5) == pytest.approx(METRICS_AT_HALF, abs=1e-6)
    assert [h_sum(i) for i in range(3)] == pytest.approx([-0.0068528, 0.3862944, 1.2274113], abs=1e-6)
    assert [h_mean(i) for i in range(3)] == pytest.approx([0.0362944, 0.1552453, 0.5965736], abs=1e-6)


def test_sigmoid():
    expected = -mean([log_sigmoid(0.5 * h_sum(i)) for i in range(3)])
    assert expected == pytest.approx(0.5762481, abs=1e-6)
    assert run(dpo(beta=0.5)) == pytest.approx({"loss": expected, **trl_metrics(0.5)}, abs=1e-6)


def test_sigmoid_with_label_smoothing_is_conservative_dpo():
    expected = mean([-0.9 * log_sigmoid(0.5 * h_sum(i)) - 0.1 * log_sigmoid(-0.5 * h_sum(i)) for i in range(3)])
    assert expected == pytest.approx(0.6030290, abs=1e-6)
    assert run(dpo(beta=0.5, label_smoothing=0.1)) == pytest.approx({"loss": expected, **trl_metrics(0.5)}, abs=1e-6)


def test_hinge():
    # β 2: pair 3's 2 * 1.227 > 1, so its loss is 0
    expected = mean([max(0.0, 1 - 2.0 * h_sum(i)) for i in range(3)])
    assert expected == pytest.approx((1.0137056 + 0.2274113 + 0.0) / 3, abs=1e-6)
    assert run(dpo(beta=2.0, loss_type="hinge")) == pytest.approx({"loss": expected, **trl_metrics(2.0)}, abs=1e-6)


def test_ipo_averages_per_token_in_the_loss_only():
    # the loss on per-token log-ratios (TRL's `ipo`), target 1 / (2 * 0.5) = 1; the metrics still from the sums:
    # pair 1 counts as wrong in rewards/accuracies (summed margin < 0) although its per-token margin is > 0
    expected = mean([(h_mean(i) - 1 / (2 * 0.5)) ** 2 for i in range(3)])
    assert expected == pytest.approx(0.6016973, abs=1e-6)
    objective = dpo(beta=0.5, loss_type="ipo")
    assert objective.logp_reduction == "mean"  # IPO's default reduction, stored reference log-probs per token too
    assert run(objective, "mean") == pytest.approx({"loss": expected, **trl_metrics(0.5)}, abs=1e-6)


def test_ipo_on_summed_log_probs_when_asked():
    expected = mean([(h_sum(i) - 1) ** 2 for i in range(3)])
    assert expected == pytest.approx(0.4807010, abs=1e-6)
    result = run(dpo(beta=0.5, loss_type="ipo", logp_reduction="sum"))
    assert result == pytest.approx({"loss": expected, **trl_metrics(0.5)}, abs=1e-6)


def test_sigmoid_on_per_token_log_probs_keeps_the_metrics_of_the_sums():
    # as TRL's `sigmoid_norm`
    expected = -mean([log_sigmoid(0.5 * h_mean(i)) for i in range(3)])
    assert expected == pytest.approx(0.6314294, abs=1e-6)
    result = run(dpo(beta=0.5, logp_reduction="mean"), "mean")
    assert result == pytest.approx({"loss": expected, **trl_metrics(0.5)}, abs=1e-6)


def test_rpo_adds_the_chosen_tokens_nll_averaged_over_the_batch():
    # TRL's loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.3]: the sft term is minus the chosen log-probs summed
    # over the batch, over its 2 + 3 + 4 = 9 chosen tokens; `nll` logs that term before its weight
    nll = -(PC[0] + PC[1] + PC[2]) / (2 + 3 + 4)
    assert nll == pytest.approx(12 / 9 * math.log(2), abs=1e-6)
    expected = -mean([log_sigmoid(0.5 * h_sum(i)) for i in range(3)]) + 0.3 * nll
    assert expected == pytest.approx(0.8535070, abs=1e-6)
    result = run(dpo(beta=0.5, nll_weight=0.3))
    assert result == pytest.approx({"loss": expected, "nll": nll, **trl_metrics(0.5)}, abs=1e-6)


def test_pair_weights_multiply_each_pairs_loss():
    # ScPO's instance weights (no TRL counterpart): the metrics are unweighted
    weights = [1.0, 0.5, 0.25]
    expected = mean([-weights[i] * log_sigmoid(0.5 * h_sum(i)) for i in range(3)])
    result = run(dpo(beta=0.5), weight=torch.tensor(weights))
    assert result == pytest.approx({"loss": expected, **trl_metrics(0.5)}, abs=1e-6)


def test_spin_is_the_sigmoid_loss_with_beta_lambda():
    expected = -mean([log_sigmoid(0.1 * h_sum(i)) for i in range(3)])
    assert expected == pytest.approx(0.6670558, abs=1e-6)
    assert run(SPIN(FixedNextToken(), λ=0.1)) == pytest.approx({"loss": expected, **trl_metrics(0.1)}, abs=1e-6)
