import pytest
import torch
from torch import nn

from self_rewarding_lm_pytorch import SFTTrainer, create_mock_dataset
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


def sorting_dataset(n, generator, length=4):
    items = []
    for _ in range(n):
        prompt = torch.randint(1, 10, (length,), generator=generator)
        items.append((torch.cat([prompt, torch.tensor([12]), prompt.sort().values]), length + 1))
    return items


def test_sft_lowers_held_out_loss_and_moves_every_parameter(make_transformer):
    generator = torch.Generator().manual_seed(0)
    train, valid = sorting_dataset(512, generator), sorting_dataset(64, generator)
    model = make_transformer(num_tokens=16, dim=64, depth=2)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}

    trainer = SFTTrainer(
        model,
        train_dataset=train,
        valid_dataset=valid,
        batch_size=32,
        grad_accum_steps=1,
        num_epochs=12,
        learning_rate=3e-3,
        end_learning_rate=3e-4,
        warmup_steps=10,
        dropout=0.0,
        valid_every=48,
        accelerate_kwargs=dict(cpu=True),
    )
    initial = trainer.valid_loss()
    history = trainer()

    final = history[-1]["valid_loss"]
    assert history[-1]["step"] == trainer.num_train_steps == 16 * 12
    assert final < 0.5 * initial, (initial, final)
    unchanged = [name for name, p in model.named_parameters() if torch.equal(p, before[name])]
    assert unchanged == []


def test_gradient_accumulation_counts_optimizer_steps_and_decays_the_learning_rate(make_transformer):
    data = create_mock_dataset(40, lambda: (torch.randint(0, 16, (8,)), torch.tensor(2)))
    trainer = SFTTrainer(
        make_transformer(num_tokens=16), train_dataset=data, batch_size=4, grad_accum_steps=5, num_epochs=2,
        learning_rate=1e-3, end_learning_rate=1e-4, accelerate_kwargs=dict(cpu=True),
    )
    history = trainer()
    assert [row["step"] for row in history] == [1, 2, 3, 4]  # 10 batches per epoch / 5 per step, 2 epochs
    assert history[-1]["lr"] == pytest.approx(1e-4)


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


def test_non_tensor_model_output_fails_at_the_first_forward():
    class HFLike(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Embedding(16, 16)

        def forward(self, ids):
            return dict(logits=self.linear(ids))

    trainer = SFTTrainer(HFLike(), train_dataset=[(torch.arange(4), 1)], batch_size=1, accelerate_kwargs=dict(cpu=True))
    with pytest.raises(TypeError, match="returned an object of type builtins.dict"):
        trainer()
