"""Dropout during each stage, as TRL: DPO (and SPIN, which trains with DPO) turns it off; SFT leaves the model's rates."""

import pytest
import torch
from conftest import tiny_transformer
from helpers import sort_pairs

from self_rewarding_lm_pytorch.tasks.sort_digits import CharTokenizer
from self_rewarding_lm_pytorch.training.dpo import DPOTrainer
from self_rewarding_lm_pytorch.training.sft import SFTTrainer

IDS = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])


def model_with_dropout():
    torch.manual_seed(0)
    return tiny_transformer(num_tokens=CharTokenizer.num_tokens, attn_dropout=0.3, ff_dropout=0.3)


def drops_out(model) -> bool:
    """Whether two forwards in train mode differ: the dropout masks do."""
    model.train()
    with torch.no_grad():
        return not torch.equal(model(IDS), model(IDS))


def test_the_model_drops_out_as_built():
    assert drops_out(model_with_dropout())  # else the tests below would pass whatever the trainers do


@pytest.mark.parametrize("dropout, expected", [("default", False), (0.0, False), (0.2, True), (None, True)])
def test_dpo_trains_without_dropout_by_default(dropout, expected):
    model = model_with_dropout()
    settings = {} if dropout == "default" else {"dropout": dropout}
    DPOTrainer(model, sort_pairs(4, seed=0), num_train_steps=1, accelerate_kwargs={"cpu": True}, **settings)
    assert drops_out(model) == expected


@pytest.mark.parametrize("dropout, expected", [("default", True), (None, True), (0.0, False)])
def test_sft_leaves_the_models_dropout_by_default(dropout, expected):
    model = model_with_dropout()
    settings = {} if dropout == "default" else {"dropout": dropout}
    rates = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    SFTTrainer(model, train_dataset=[(torch.arange(1, 6), 2)], num_epochs=1, accelerate_kwargs={"cpu": True},
               **settings)
    assert drops_out(model) == expected
    if expected:
        assert [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)] == rates
