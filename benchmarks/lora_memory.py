"""Peak memory of one DPO step: LoRA with the reference = adapters off, vs full fine-tuning with a frozen copy.

    python benchmarks/lora_memory.py            # LlamaForCausalLM, hidden 1024, 8 layers, vocabulary 32,000 (~170M)
    python benchmarks/lora_memory.py --small    # hidden 256, 4 layers, vocabulary 4,000: a quick check

The same random model and the same pairs, one `DPOTrainer` step each with a live reference (`precompute_reference=False`):
full fine-tuning holds the policy, its gradients, AdamW's two moments and a frozen copy of the policy; LoRA (r 16 on
every projection) holds the policy once, the adapters' gradients and moments, and runs the reference by disabling
the adapters. Peak memory counts every tensor alive from building the model to the end of the step: on a GPU,
torch's peak allocated memory; on CPU, the peak bytes of live tensor storage, counted as tensors are created and
freed (what an accelerator's allocator would need; resident memory would add the allocator's caching).
"""

from __future__ import annotations

import argparse
import gc
import weakref

import torch
from peft import LoraConfig, get_peft_model
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from transformers import LlamaConfig, LlamaForCausalLM

from self_rewarding_lm_pytorch import DPOTrainer
from self_rewarding_lm_pytorch.models.hf import HFCausalLM


def dpo_step(variant: str, config: LlamaConfig, pairs: list[dict], device: str) -> dict:
    """Build the model (with LoRA for 'lora') and the trainer, run one DPO step; what the peak counts."""
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    if variant == "lora":
        projections = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=projections, lora_dropout=0.0))
    model = HFCausalLM(model)
    trainer = DPOTrainer(model, pairs, batch_size=len(pairs), num_train_steps=1, learning_rate=1e-5,
                         end_learning_rate=1e-6, dropout=0.0, precompute_reference=False,
                         accelerate_kwargs=dict(cpu=device == "cpu"))
    trainer.train()
    return dict(trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
                total=sum(p.numel() for p in model.parameters()), reference=type(trainer.ref_model).__name__)


def peak_memory(variant: str, config: LlamaConfig, pairs: list[dict]) -> dict:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        start = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        result = dpo_step(variant, config, pairs, "cuda")
        return dict(result, peak=torch.cuda.max_memory_allocated() - start, device="cuda")
    tracker = LiveTensorBytes()
    with tracker:
        result = dpo_step(variant, config, pairs, "cpu")
    return dict(result, peak=tracker.peak, device="cpu")


class LiveTensorBytes(TorchDispatchMode):
    """Every tensor storage created under this mode counts from its creation until it is freed; `peak` is the most
    bytes alive at once."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.seen: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                self.count(tensor.untyped_storage())
        return out

    def count(self, storage):
        key, size = id(storage), storage.nbytes()
        if key in self.seen or size == 0:
            return
        self.seen.add(key)
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self.free, key, size)

    def free(self, key: int, size: int):
        self.seen.discard(key)
        self.live -= size


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="hidden 256, 4 layers, vocabulary 4,000")
    parser.add_argument("--batch", type=int, default=4, help="pairs per step")
    parser.add_argument("--seq-len", type=int, default=128, help="prompt + response tokens")
    args = parser.parse_args()
    torch.set_num_threads(2)

    hidden, layers, vocab = (256, 4, 4000) if args.small else (1024, 8, 32000)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 11 // 4, num_hidden_layers=layers,
                         num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64,
                         max_position_embeddings=2 * args.seq_len)
    generator = torch.Generator().manual_seed(1)
    half = args.seq_len // 2
    pairs = []
    for _ in range(args.batch):
        prompt = torch.randint(0, vocab, (half,), generator=generator)
        pairs.append(dict(chosen=torch.cat([prompt, torch.randint(0, vocab, (half,), generator=generator)]),
                          rejected=torch.cat([prompt, torch.randint(0, vocab, (half,), generator=generator)]),
                          prompt_len=half))

    full, lora = peak_memory("full", config, pairs), peak_memory("lora", config, pairs)
    print(f"model: {full['total'] / 1e6:.1f}M parameters; {args.batch} pairs of {args.seq_len} tokens; {full['device']}")
    print(f"full fine-tuning, frozen reference copy ({full['reference']}): peak {full['peak'] / 2**20:,.0f} MiB, "
          f"{full['trainable'] / 1e6:.1f}M trainable")
    print(f"LoRA r=16, reference = adapters off ({lora['reference']}): peak {lora['peak'] / 2**20:,.0f} MiB, "
          f"{lora['trainable'] / 1e6:.2f}M trainable")
    print(f"ratio full / LoRA: {full['peak'] / lora['peak']:.2f}x")


if __name__ == "__main__":
    main()
