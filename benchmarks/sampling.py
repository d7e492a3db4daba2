"""Sampler throughput, in one run on one model and batch (greedy):
  (a) full recompute of the whole sequence per token (the original library's method): sample(..., cache_kv=False)
  (b) this library's sampler: sample(...) with x-transformers' KV cache
  (c) x-transformers' AutoregressiveWrapper.generate(cache_kv=True)

    python benchmarks/sampling.py                 # depth 6 and depth 1, dim 512, batch 8, prompt 32, 256 new tokens
    python benchmarks/sampling.py --new-tokens 64 --depths 1 --repeats 1   # a quick run
    python benchmarks/sampling.py --device cuda   # on a GPU (timings synchronise the device)

Targets (issue 3): (b) >= 15x (a), and (b) >= 1.0x (c) at depth 6. Timings on shared machines vary +-25% run to
run, so the three are measured side by side, (b) and (c) interleaved, best of --repeats.
"""

from __future__ import annotations

import argparse
import time

import torch
from x_transformers import AutoregressiveWrapper, Decoder, TransformerWrapper

from self_rewarding_lm_pytorch import sample


def seconds(fn) -> tuple[float, torch.Tensor]:
    synchronize()
    start = time.perf_counter()
    out = fn()
    synchronize()
    return time.perf_counter() - start, out


def synchronize():
    if torch.cuda.is_available():  # kernels run asynchronously: time what the device did, not what was queued
        torch.cuda.synchronize()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--depths", type=int, nargs="+", default=[6, 1])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--max-seq-len", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="best of N for the cached methods (recompute runs once)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    max_seq_len = max(args.max_seq_len, args.prompt + args.new_tokens)

    print(f"batch {args.batch}, prompt {args.prompt}, {args.new_tokens} new tokens, greedy, {args.threads} threads, "
          f"dim {args.dim}, max_seq_len {max_seq_len}, device {args.device}")
    print(f"{'depth':>5} {'(a) recompute':>15} {'(b) sample':>12} {'(c) x-t generate':>17} {'b/a':>7} {'b/c':>6}  b == c tokens")
    for depth in args.depths:
        torch.manual_seed(0)
        net = TransformerWrapper(num_tokens=256, max_seq_len=max_seq_len,
                                 attn_layers=Decoder(dim=args.dim, depth=depth, heads=8)).eval().to(args.device)
        prompts = torch.randint(0, 256, (args.batch, args.prompt), device=args.device)
        wrapper = AutoregressiveWrapper(net)
        tokens = args.batch * args.new_tokens

        def ours(**kwargs):
            return sample(net, prompts, max_new_tokens=args.new_tokens, temperature=0.0, **kwargs)

        def theirs():
            return wrapper.generate(prompts, args.new_tokens, temperature=0.0, cache_kv=True)

        recompute, _ = seconds(lambda: ours(cache_kv=False))
        ours_times, theirs_times = [], []
        for _ in range(args.repeats):  # interleaved, so that a slow spell on the machine hits both
            t, ours_out = seconds(ours)
            ours_times.append(t)
            t, theirs_out = seconds(theirs)
            theirs_times.append(t)

        rates = [tokens / t for t in (recompute, min(ours_times), min(theirs_times))]
        print(f"{depth:>5} {rates[0]:>11.0f} t/s {rates[1]:>8.0f} t/s {rates[2]:>13.0f} t/s "
              f"{rates[1] / rates[0]:>6.1f}x {rates[1] / rates[2]:>5.2f}x  {torch.equal(ours_out, theirs_out)}")


if __name__ == "__main__":
    main()
