import pytest
import torch
from jaxtyping import TypeCheckError

from self_rewarding_lm_pytorch.training.losses import preference_loss

# One pair worked by hand: policy log-probs chosen -1, rejected -4; reference -2 and -2.
# Log-ratios: chosen -1 - (-2) = 1, rejected -4 - (-2) = -2, so h = 1 - (-2) = 3.
POLICY_CHOSEN, POLICY_REJECTED = torch.tensor([-1.0]), torch.tensor([-4.0])
REF_CHOSEN, REF_REJECTED = torch.tensor([-2.0]), torch.tensor([-2.0])


def loss_of(**kwargs):
    return preference_loss(POLICY_CHOSEN, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED, **kwargs)


def test_sigmoid_is_dpo_equation_7():
    # beta 0.5: -log sigmoid(0.5 * 3) = log(1 + e^-1.5) = log(1.2231302) = 0.2014133
    assert loss_of(beta=0.5).item() == pytest.approx(0.2014133, abs=1e-6)


def test_label_smoothing_is_conservative_dpo():
    # -(0.9) log sigmoid(1.5) - 0.1 log sigmoid(-1.5); -log sigmoid(-1.5) = 1.5 + 0.2014133 = 1.7014133
    # -> 0.9 * 0.2014133 + 0.1 * 1.7014133 = 0.3514133
    assert loss_of(beta=0.5, label_smoothing=0.1).item() == pytest.approx(0.3514133, abs=1e-6)


def test_ipo_is_the_squared_distance_to_half_inverse_beta():
    # beta 0.25: 1 / (2 * 0.25) = 2, (3 - 2)^2 = 1; beta 0.5: (3 - 1)^2 = 4
    assert loss_of(beta=0.25, loss_type="ipo").item() == pytest.approx(1.0)
    assert loss_of(beta=0.5, loss_type="ipo").item() == pytest.approx(4.0)


def test_hinge_is_slic():
    # beta 0.25: max(0, 1 - 0.75) = 0.25; beta 0.5: max(0, 1 - 1.5) = 0
    assert loss_of(beta=0.25, loss_type="hinge").item() == pytest.approx(0.25)
    assert loss_of(beta=0.5, loss_type="hinge").item() == 0.0


def test_rows_are_independent():
    policy_chosen = torch.tensor([-1.0, -2.0], requires_grad=True)
    policy_rejected = torch.tensor([-4.0, -2.0], requires_grad=True)
    losses = preference_loss(
        policy_chosen, policy_rejected, torch.tensor([-2.0, -2.0]), torch.tensor([-2.0, -2.0]), beta=0.5
    )
    # second pair: h = 0, loss = log 2
    assert losses.tolist() == pytest.approx([0.2014133, 0.6931472], abs=1e-6)
    losses.sum().backward()
    # d/d pi_c of -log sigmoid(beta h) = -beta * sigmoid(-beta h): h = 0 -> -0.25
    assert policy_chosen.grad[1].item() == pytest.approx(-0.25)
    assert policy_rejected.grad[1].item() == pytest.approx(0.25)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(beta=0.0), "beta must be > 0"),
        (dict(beta=-0.1), "beta must be > 0"),
        (dict(label_smoothing=0.5), r"label_smoothing must be in \[0, 0.5\)"),
        (dict(label_smoothing=-0.1), r"label_smoothing must be in \[0, 0.5\)"),
        (dict(label_smoothing=0.1, loss_type="ipo"), "sigmoid' only"),
        (dict(label_smoothing=0.1, loss_type="hinge"), "sigmoid' only"),
    ],
)
def test_bad_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        loss_of(**kwargs)


def test_unknown_loss_type_and_mismatched_batches_fail_the_type_check():
    with pytest.raises(TypeCheckError, match="loss_type"):
        loss_of(loss_type="kto")
    with pytest.raises(TypeCheckError):
        preference_loss(torch.zeros(2), torch.zeros(3), torch.zeros(2), torch.zeros(2))
