"""Where the DPO objective follows TRL's conventions (docs/differences.md lists where it does not)."""

import math

import pytest
import torch
from torch import nn

from self_rewarding_lm_pytorch.training.dpo import DPOConfig
from self_rewarding_lm_pytorch.training.dpo_objective import DPO
from self_rewarding_lm_pytorch.training.spin import SelfPlayConfig


class FixedBigram(nn.Module):
    """From any token: p(1) = 1/2, p(2) = 1/4, p(0) = p(3) = 1/8."""

    def forward(self, ids):
        return torch.tensor([1 / 8, 1 / 2, 1 / 4, 1 / 8]).log().expand(*ids.shape, 4)


LOG2 = math.log(2)


def test_ipo_averages_log_probs_per_token_by_default_as_trl():
    assert DPOConfig(num_train_steps=1, loss_type="ipo").logp_reduction == "mean"
    assert DPOConfig(num_train_steps=1).logp_reduction == "sum"
    assert DPOConfig(num_train_steps=1, loss_type="ipo", logp_reduction="sum").logp_reduction == "sum"
    spin = SelfPlayConfig(train_sft_dataset=[(torch.tensor([1, 2, 3]), 1)], max_seq_len=8, spin_kwargs=dict(loss_type="ipo"))
    assert spin.dpo_config().logp_reduction == "mean"

    # prompt [0]; chosen [1] (log p = -log 2), rejected [2, 2, 2] (-2 log 2 per token, -6 log 2 in all);
    # reference log-probs 0, so h = -log 2 - (-2 log 2) = log 2 per token (5 log 2 if summed)
    dpo = DPO(FixedBigram(), beta=0.1, loss_type="ipo", precomputed_reference=True)
    assert dpo.logp_reduction == "mean"
    loss, _ = dpo(torch.tensor([[0, 1, -1, -1]]), torch.tensor([[0, 2, 2, 2]]), torch.tensor([1]),
                  torch.zeros(1), torch.zeros(1))
    assert loss.item() == pytest.approx((LOG2 - 1 / (2 * 0.1)) ** 2, abs=1e-5)


def test_rpo_nll_is_averaged_over_every_chosen_token_of_the_batch_as_trl():
    # chosen responses [1] (NLL log 2) and [2, 2, 2] (NLL 2 log 2 per token): over the batch's 4 chosen tokens the
    # NLL is (log 2 + 6 log 2) / 4 = 7/4 log 2 (per sequence it would be 3/2 log 2); the reference equals the policy,
    # so the sigmoid part is log 2 for each pair
    dpo = DPO(FixedBigram(), beta=0.1, nll_weight=1.0, ref_model=FixedBigram())
    chosen = torch.tensor([[0, 1, -1, -1], [0, 2, 2, 2]])
    rejected = torch.tensor([[0, 3, -1, -1], [0, 3, 3, -1]])
    loss, metrics = dpo(chosen, rejected, torch.tensor([1, 1]))
    assert loss.item() == pytest.approx(LOG2 + 7 / 4 * LOG2, abs=1e-5)
    # the logged nll is that term before its weight (TRL logs no such metric)
    assert metrics["nll"].item() == pytest.approx(7 / 4 * LOG2, abs=1e-5)
