import pytest
import torch
from torch import nn

from self_rewarding_lm_pytorch.models.contract import ModelContractError, forward_logits


class ReturnsTuple(nn.Module):
    def forward(self, ids):
        return torch.zeros(*ids.shape, 5), None


class ReturnsObject(nn.Module):
    class Output:
        def __init__(self, logits):
            self.logits = logits

    def forward(self, ids):
        return self.Output(torch.zeros(*ids.shape, 5))


class ReturnsWrongRank(nn.Module):
    def forward(self, ids):
        return torch.zeros(ids.shape[0], 5)


class ReturnsIntegers(nn.Module):
    def forward(self, ids):
        return torch.zeros(*ids.shape, 5, dtype=torch.long)


@pytest.mark.parametrize(
    "model, expected",
    [
        (ReturnsTuple(), "returned a tuple of 2 items"),
        (ReturnsObject(), "Output"),
        (ReturnsWrongRank(), r"shape \(2, 5\)"),
        (ReturnsIntegers(), "floating point"),
    ],
)
def test_contract_violations_name_what_came_back_and_the_fix(model, expected):
    with pytest.raises(ModelContractError, match=expected) as error:
        forward_logits(model, torch.zeros(2, 3, dtype=torch.long))
    assert "HFCausalLM" in str(error.value)


def test_transformer_wrapper_keeps_the_contract(make_transformer):
    model = make_transformer(num_tokens=16)
    ids = torch.randint(0, 16, (2, 7))
    assert forward_logits(model, ids).shape == (2, 7, 16)
