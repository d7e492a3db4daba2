import pytest
import torch
from torch import nn

from self_rewarding_lm_pytorch import SFTTrainer
from self_rewarding_lm_pytorch.data.datasets import SFTCollate
from self_rewarding_lm_pytorch.training.sft import sft_nll


class Bigram(nn.Module):
    """Logits at t depend on token t only, so which tokens feed the scored predictions is exact."""

    def __init__(self, num_tokens=16):
        super().__init__()
        self.embed = nn.Embedding(num_tokens, num_tokens)

    def forward(self, ids):
        return self.embed(ids)


def loss_and_grad(model, seq, prompt_len):
    model.zero_grad()
    batch = SFTCollate(pad_id=-1)([(seq, prompt_len)])
    nll, tokens = sft_nll(model, batch)
    loss = nll.sum() / tokens.sum()
    loss.backward()
    return loss.item(), model.embed.weight.grad.clone()


def test_prompt_tokens_do_not_contribute_to_loss_or_gradients():
    torch.manual_seed(0)
    model = Bigram()
    # prompt = 4 tokens; the scored predictions read logits at positions 3..6, i.e. tokens 3..6.
    # Tokens 0..2 are prompt tokens that only a loss on the prompt would see.
    seq = torch.tensor([1, 2, 3, 4, 5, 6, 7, 8])
    changed = torch.tensor([9, 10, 11, 4, 5, 6, 7, 8])
    loss_a, grad_a = loss_and_grad(model, seq, 4)
    loss_b, grad_b = loss_and_grad(model, changed, 4)
    assert loss_a == pytest.approx(loss_b)
    assert torch.equal(grad_a, grad_b)

    # and the response does count: changing a response token changes the loss
    loss_c, _ = loss_and_grad(model, torch.tensor([1, 2, 3, 4, 5, 6, 7, 9]), 4)
    assert loss_c != pytest.approx(loss_a)


def test_loss_is_the_mean_nll_of_response_tokens_shifted_by_one():
    torch.manual_seed(0)
    model = Bigram()
    seq = torch.tensor([1, 2, 3, 4, 5])
    loss, _ = loss_and_grad(model, seq, 2)
    log_probs = model.embed.weight.log_softmax(-1)
    # token t (t >= prompt_len = 2) is predicted from token t - 1
    expected = -(log_probs[seq[1], seq[2]] + log_probs[seq[2], seq[3]] + log_probs[seq[3], seq[4]]) / 3
    assert loss == pytest.approx(expected.item(), abs=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(train_dataset=[]), "empty"),
        (dict(train_dataset=[(torch.tensor([1, 2]), 2)]), "no response tokens"),
        (dict(train_dataset=[(torch.arange(4), 1)], valid_every=5), "no valid_dataset"),
        (dict(train_dataset=[(torch.arange(4), 1)], learning_rate=1e-6, end_learning_rate=1e-5), "end_learning_rate"),
    ],
)
def test_bad_configuration_fails_at_construction(make_transformer, kwargs, message):
    with pytest.raises(ValueError, match=message):
        SFTTrainer(make_transformer(), accelerate_kwargs=dict(cpu=True), **kwargs)
