"""Cost of a DPO step relative to an SFT step on the same model and the same tokens.

    python benchmarks/preference_step.py            # TransformerWrapper(num_tokens=256, dim=512, depth=6)
    python benchmarks/preference_step.py --small    # dim 128, depth 2: a quick check
    python benchmarks/preference_step.py --device cuda --batch 32 --seq-len 512   # on a GPU

An SFT step (forward + backward + AdamW) over 2B sequences is compared with a DPO step over B pairs (the same
2B sequences): with stored reference log-probs (one policy forward, the DPO objective adds nothing else) and
with a live frozen reference (one more forward, no backward: about a third of a step). Configurations are
timed in turn, repeat after repeat, so drift on a shared machine hits them alike; the median is reported.
Targets: stored reference <= 1.15x SFT, live reference <= 1.5x.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from x_transformers import Decoder, TransformerWrapper

from self_rewarding_lm_pytorch.training.dpo_objective import DPO
from self_rewarding_lm_pytorch.training.sft import sft_nll


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="dim 128, depth 2 instead of dim 512, depth 6")
    parser.add_argument("--batch", type=int, default=8, help="B: pairs per DPO step (SFT gets 2B sequences)")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    dim, depth = (128, 2) if args.small else (512, 6)
    model = TransformerWrapper(num_tokens=256, max_seq_len=args.seq_len, attn_layers=Decoder(dim=dim, depth=depth, heads=8)).to(args.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    num_params = sum(p.numel() for p in model.parameters())

    # B pairs sharing a prompt of a quarter of the sequence; SFT trains on the same 2B sequences
    b, n = args.batch, args.seq_len
    device = args.device
    prompt = torch.randint(0, 256, (b, n // 4), device=device)
    chosen = torch.cat([prompt, torch.randint(0, 256, (b, n - n // 4), device=device)], dim=-1)
    rejected = torch.cat([prompt, torch.randint(0, 256, (b, n - n // 4), device=device)], dim=-1)
    prompt_len = torch.full((b,), n // 4, device=device)
    sft_batch = dict(seq=torch.cat([chosen, rejected]), prompt_len=prompt_len.repeat(2),
                     is_padding=torch.zeros(2 * b, n, dtype=torch.bool, device=device))
    ref_logps = dict(chosen_ref_logp=torch.randn(b, device=device) - 500, rejected_ref_logp=torch.randn(b, device=device) - 500)

    precomputed, live = DPO(model, precomputed_reference=True), DPO(model)

    def sft_step():
        nll, tokens = sft_nll(model, sft_batch)
        return nll.sum() / tokens.sum()

    steps = {
        "SFT, 2B sequences": sft_step,
        "DPO, B pairs, stored reference": lambda: precomputed(chosen, rejected, prompt_len, **ref_logps)[0],
        "DPO, B pairs, live reference": lambda: live(chosen, rejected, prompt_len)[0],
    }
    model.train()
    times = {name: [] for name in steps}
    for repeat in range(args.warmup + args.repeats):
        for name, loss_fn in steps.items():
            synchronize()
            start = time.perf_counter()
            loss = loss_fn()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            synchronize()
            if repeat >= args.warmup:
                times[name].append(time.perf_counter() - start)

    print(f"model: dim {dim}, depth {depth}, {num_params / 1e6:.1f}M parameters; B = {b} pairs of {n} tokens; "
          f"{args.threads} threads, device {device}; median of {args.repeats} after {args.warmup} warmup")
    sft_ms = statistics.median(times["SFT, 2B sequences"]) * 1e3
    print(f"{'step':<34}{'ms/step':>10}{'vs SFT':>9}{'target':>9}")
    for name, target in zip(steps, ("", "<= 1.15x", "<= 1.5x")):
        ms = statistics.median(times[name]) * 1e3
        print(f"{name:<34}{ms:>10.1f}{ms / sft_ms:>8.2f}x{target:>9}")


def synchronize():
    if torch.cuda.is_available():  # kernels run asynchronously: time what the device did, not what was queued
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
