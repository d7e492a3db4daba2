"""Peak memory of one DPO step: LoRA with the reference = adapters off, vs full fine-tuning with a frozen copy.

    python benchmarks/lora_memory.py            # LlamaForCausalLM, hidden 1024, 8 layers, vocabulary 32,000 (~170M)
    python benchmarks/lora_memory.py --small    # hidden 256, 4 layers, vocabulary 4,000: a quick check

The same random model and the same pairs, one `DPOTrainer` step each with a live reference (`precompute_reference=False`):
full fine-tuning holds the policy, its gradients, AdamW's two moments and a frozen copy of the policy; LoRA (r 16 on
every projection) holds the policy once, the adapters' gradients and moments, and runs the reference by disabling
the adapters. Each variant runs in its own process so that its peak is its own: on a GPU, torch's peak allocated
memory; on CPU, the peak resident memory minus the resident memory before the model was built.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def one_step(variant: str, small: bool, batch: int, seq_len: int) -> dict:
    import torch

    torch.set_num_threads(2)
    if not torch.cuda.is_available():
        # both variants first run a tiny step of each kind, so that every library either of them loads lazily
        # (peft's tuners, accelerate, ...) is part of the baseline, not of the measurement
        for warm_up in ("full", "lora"):
            measure(warm_up, (64, 1, 100), 2, 16)
    before = rss_bytes()
    size = (256, 4, 4000) if small else (1024, 8, 32000)
    result = measure(variant, size, batch, seq_len)
    if result["device"] == "cpu":
        result["peak"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    return result


def measure(variant: str, size: tuple[int, int, int], batch: int, seq_len: int) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from self_rewarding_lm_pytorch import DPOTrainer
    from self_rewarding_lm_pytorch.hf import HFCausalLM

    cuda = torch.cuda.is_available()
    torch.manual_seed(0)
    hidden, layers, vocab = size
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 11 // 4, num_hidden_layers=layers,
                         num_attention_heads=max(1, hidden // 64), num_key_value_heads=max(1, hidden // 64),
                         max_position_embeddings=2 * seq_len)
    with torch.device("cuda" if cuda else "cpu"):
        model = LlamaForCausalLM(config)
    if variant == "lora":
        projections = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=projections, lora_dropout=0.0))
    model = HFCausalLM(model)
    generator = torch.Generator().manual_seed(1)
    half = seq_len // 2
    pairs = []
    for _ in range(batch):
        prompt = torch.randint(0, vocab, (half,), generator=generator)
        pairs.append(dict(chosen=torch.cat([prompt, torch.randint(0, vocab, (half,), generator=generator)]),
                          rejected=torch.cat([prompt, torch.randint(0, vocab, (half,), generator=generator)]),
                          prompt_len=half))
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer = DPOTrainer(model, pairs, batch_size=batch, num_train_steps=1, learning_rate=1e-5, end_learning_rate=1e-6,
                         dropout=0.0, precompute_reference=False, accelerate_kwargs=dict(cpu=not cuda))
    trainer.train()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    peak = torch.cuda.max_memory_allocated() if cuda else None  # CPU: measured by the caller
    return dict(variant=variant, device="cuda" if cuda else "cpu", peak=peak, trainable=trainable,
                total=sum(p.numel() for p in model.parameters()), reference=type(trainer.ref_model).__name__)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="hidden 256, 4 layers, vocabulary 4,000")
    parser.add_argument("--batch", type=int, default=4, help="pairs per step")
    parser.add_argument("--seq-len", type=int, default=128, help="prompt + response tokens")
    parser.add_argument("--variant", choices=["full", "lora"], help=argparse.SUPPRESS)  # one measurement, in a child
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(one_step(args.variant, args.small, args.batch, args.seq_len)))
        return

    results = {}
    for variant in ("full", "lora"):
        command = [sys.executable, __file__, "--variant", variant, "--batch", str(args.batch), "--seq-len", str(args.seq_len)]
        out = subprocess.run(command + (["--small"] if args.small else []), capture_output=True, text=True, check=True)
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    full, lora = results["full"], results["lora"]
    print(f"model: {full['total'] / 1e6:.1f}M parameters; {args.batch} pairs of {args.seq_len} tokens; {full['device']}")
    print(f"full fine-tuning, frozen reference copy ({full['reference']}): peak {full['peak'] / 2**20:,.0f} MiB, "
          f"{full['trainable'] / 1e6:.1f}M trainable")
    print(f"LoRA r=16, reference = adapters off ({lora['reference']}): peak {lora['peak'] / 2**20:,.0f} MiB, "
          f"{lora['trainable'] / 1e6:.2f}M trainable")
    print(f"ratio full / LoRA: {full['peak'] / lora['peak']:.2f}x")


if __name__ == "__main__":
    main()
