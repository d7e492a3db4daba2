import math

import pytest
import torch
import torch.nn.functional as F
from helpers import sort_pairs
from torch import nn

from self_rewarding_lm_pytorch.training.dpo import DPOConfig, DPOTrainer
from self_rewarding_lm_pytorch.training.dpo_objective import DPO
from self_rewarding_lm_pytorch.training.early_stopping import EarlyStopper
from self_rewarding_lm_pytorch.training.logprobs import reference_logprobs


class Bigram(nn.Module):
    """Logits at t depend on token t only: log p(b | a) = log_softmax(embed.weight)[a, b], readable by hand."""

    def __init__(self, num_tokens=8, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(num_tokens, num_tokens)

    def forward(self, ids):
        return self.embed(ids)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_loss_and_metrics_by_hand(reduction):
    policy, ref = Bigram(seed=0), Bigram(seed=1)
    dpo = DPO(policy, beta=0.5, ref_model=ref, logp_reduction=reduction, nll_weight=0.3)
    # prompt [1, 2]; chosen response [3, 4], rejected response [5] (its row is shorter: padded inside DPO)
    chosen, rejected, prompt_len = torch.tensor([[1, 2, 3, 4]]), torch.tensor([[1, 2, 5]]), torch.tensor([2])
    loss, metrics = dpo(chosen, rejected, prompt_len)

    # token t is scored by the logits at t - 1: chosen = log p(3|2) + log p(4|3), rejected = log p(5|2)
    with torch.no_grad():
        lp, lr = policy.embed.weight.log_softmax(-1), ref.embed.weight.log_softmax(-1)
        count_chosen, count_rejected = (2, 1) if reduction == "mean" else (1, 1)
        pc, pr = (lp[2, 3] + lp[3, 4]) / count_chosen, lp[2, 5] / count_rejected
        rc, rr = (lr[2, 3] + lr[3, 4]) / count_chosen, lr[2, 5] / count_rejected
        nll = -(lp[2, 3] + lp[3, 4]) / 2  # per token, whatever the reduction
        expected = -F.logsigmoid(0.5 * ((pc - rc) - (pr - rr))) + 0.3 * nll

    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    assert metrics["loss"].item() == pytest.approx(expected.item(), abs=1e-6)
    # the metrics use the summed log-probs whatever the loss's reduction, as TRL's
    pc, pr, rc, rr = pc * count_chosen, pr * count_rejected, rc * count_chosen, rr * count_rejected
    assert metrics["rewards/chosen"].item() == pytest.approx(0.5 * (pc - rc).item(), abs=1e-6)
    assert metrics["rewards/rejected"].item() == pytest.approx(0.5 * (pr - rr).item(), abs=1e-6)
    assert metrics["rewards/margins"].item() == pytest.approx(0.5 * ((pc - rc) - (pr - rr)).item(), abs=1e-6)
    assert metrics["rewards/accuracies"].item() == float((pc - rc) > (pr - rr))
    assert metrics["logps/chosen"].item() == pytest.approx(pc.item(), abs=1e-6)
    assert metrics["logps/rejected"].item() == pytest.approx(pr.item(), abs=1e-6)
    assert metrics["nll"].item() == pytest.approx(nll.item(), abs=1e-6)
    assert all(not v.requires_grad for v in metrics.values())

    loss.backward()
    assert policy.embed.weight.grad is not None and ref.embed.weight.grad is None


def test_no_nll_metric_without_nll_weight():
    _, metrics = DPO(Bigram())(torch.tensor([[1, 2, 3]]), torch.tensor([[1, 2, 4]]), torch.tensor([2]))
    assert "nll" not in metrics


def stack(pairs, pad_id=-1):
    from self_rewarding_lm_pytorch.training.dpo_batches import DPOCollate

    return DPOCollate(pad_id)(pairs)


def test_precomputed_and_live_reference_give_the_same_loss(make_transformer):
    model, reference = make_transformer(num_tokens=128).eval(), make_transformer(num_tokens=128).eval()  # same weights
    batch = stack(sort_pairs(6, seed=0))
    seqs = [s[s != -1] for s in torch.cat([batch["chosen"], batch["rejected"]])]
    ref = reference_logprobs(reference, seqs, batch["prompt_len"].repeat(2), pad_id=-1)  # what pair generation stores

    with torch.no_grad():  # move the policy away from the reference, so the reference matters
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    live, precomputed = DPO(model, 0.5, ref_model=reference), DPO(model, 0.5, precomputed_reference=True)
    assert precomputed.ref_model is None

    live_loss, live_metrics = live(**batch)
    pre_loss, pre_metrics = precomputed(**batch, chosen_ref_logp=ref[:6], rejected_ref_logp=ref[6:])
    assert live_loss.item() == pytest.approx(pre_loss.item(), abs=1e-6)
    assert live_metrics["rewards/margins"].item() == pytest.approx(pre_metrics["rewards/margins"].item(), abs=1e-5)
    assert abs(live_loss.item() - math.log(2)) > 1e-2  # the moved policy is not the reference

    with pytest.raises(ValueError, match="holds no reference model"):
        precomputed(**batch)
    # by default the reference is a frozen copy of the policy as it is at construction
    copied = DPO(model)
    assert copied.ref_model is not model
    assert all(torch.equal(a, b) for a, b in zip(copied.ref_model.parameters(), model.parameters()))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(), "neither num_train_steps nor num_epochs.*early_stopper"),
        (dict(early_stopper=EarlyStopper(lambda m: 0.0), early_stop_every=1), "neither num_train_steps nor num_epochs"),
        (dict(num_train_steps=1, early_stopper=EarlyStopper(lambda m: 0.0)), "needs early_stop_every"),
        (dict(num_train_steps=1, early_stop_every=5), "no early_stopper"),
        (dict(num_train_steps=1, loss_type="ipo", label_smoothing=0.1), "sigmoid' only"),
        (dict(num_train_steps=1, beta=0.0), "beta must be > 0"),
        (dict(num_train_steps=1, logp_reduction="max"), "logp_reduction"),
        (dict(num_train_steps=1, learning_rate=1e-7, end_learning_rate=1e-6), "end_learning_rate"),
        (dict(num_train_steps=0), "num_train_steps must be >= 1"),
        (dict(num_train_steps=1, nll_weight=-1.0), "nll_weight"),
    ],
)
def test_bad_config_fails_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DPOConfig(**kwargs)


@pytest.mark.parametrize(
    "dataset, kwargs, message",
    [
        ([], {}, "empty"),
        ([dict(chosen=torch.tensor([1, 2, 3]), rejected=torch.tensor([1, 2]), prompt_len=2)], {}, "no response tokens in the rejected"),
        ([dict(chosen=torch.tensor([1, 2, 3]), rejected=torch.tensor([1, 5, 4]), prompt_len=2)], {}, "same prompt"),
        ([dict(chosen=torch.tensor([1, 2, 3]), rejected=torch.tensor([1, 2, 4]), prompt_len=2)], dict(valid_every=1), "no valid_dataset"),
        ([(torch.tensor([1, 2, 3]), 2)], {}, "must be a dict"),
    ],
)
def test_bad_data_fails_at_construction(make_transformer, dataset, kwargs, message):
    with pytest.raises(ValueError, match=message):
        DPOTrainer(make_transformer(), dataset, num_train_steps=1, accelerate_kwargs=dict(cpu=True), **kwargs)
