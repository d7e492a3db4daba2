import pytest
import torch
from torch import nn

from self_rewarding_lm_pytorch import SFTTrainer, create_mock_dataset


def sorting_dataset(n, generator, length=4):
    items = []
    for _ in range(n):
        prompt = torch.randint(1, 10, (length,), generator=generator)
        items.append((torch.cat([prompt, torch.tensor([12]), prompt.sort().values]), length + 1))
    return items


def test_sft_lowers_held_out_loss_and_moves_every_parameter(make_transformer):
    """About 4 s idle."""
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
    """Under 1 s idle."""
    data = create_mock_dataset(40, lambda: (torch.randint(0, 16, (8,)), torch.tensor(2)))
    trainer = SFTTrainer(
        make_transformer(num_tokens=16), train_dataset=data, batch_size=4, grad_accum_steps=5, num_epochs=2,
        learning_rate=1e-3, end_learning_rate=1e-4, accelerate_kwargs=dict(cpu=True),
    )
    history = trainer()
    assert [row["step"] for row in history] == [1, 2, 3, 4]  # 10 batches per epoch / 5 per step, 2 epochs
    assert history[-1]["lr"] == pytest.approx(1e-4)


def test_non_tensor_model_output_fails_at_the_first_forward():
    """Under 1 s idle."""
    class HFLike(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Embedding(16, 16)

        def forward(self, ids):
            return dict(logits=self.linear(ids))

    trainer = SFTTrainer(HFLike(), train_dataset=[(torch.arange(4), 1)], batch_size=1, accelerate_kwargs=dict(cpu=True))
    with pytest.raises(TypeError, match="returned an object of type builtins.dict"):
        trainer()
