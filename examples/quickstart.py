"""Quickstart: fine-tune a tiny x-transformers model on a small verifiable task (sorting digits), on CPU.

Until the full pipeline lands this runs the SFT stage alone and reports held-out loss before and after.
"""

import torch
from x_transformers import Decoder, TransformerWrapper

from self_rewarding_lm_pytorch import SFTTrainer


def sorting_examples(n: int, generator: torch.Generator, length: int = 5, separator: int = 11):
    """prompt: `length` digits 1-9 then a separator; response: the digits sorted."""
    items = []
    for _ in range(n):
        digits = torch.randint(1, 10, (length,), generator=generator)
        items.append((torch.cat([digits, torch.tensor([separator]), digits.sort().values]), length + 1))
    return items


def main():
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    train, valid = sorting_examples(2048, generator), sorting_examples(128, generator)

    model = TransformerWrapper(num_tokens=16, max_seq_len=32, attn_layers=Decoder(dim=64, depth=2, heads=4))

    trainer = SFTTrainer(
        model,
        train_dataset=train,
        valid_dataset=valid,
        batch_size=32,
        grad_accum_steps=1,
        num_epochs=3,
        learning_rate=3e-3,
        end_learning_rate=3e-4,
        warmup_steps=10,
        dropout=0.0,
        valid_every=64,
        accelerate_kwargs=dict(cpu=True),
    )
    initial = trainer.valid_loss()
    history = trainer()
    print(f"held-out response loss: {initial:.3f} before SFT -> {history[-1]['valid_loss']:.3f} after {len(history)} steps")


if __name__ == "__main__":
    main()
