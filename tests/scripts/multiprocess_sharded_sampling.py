"""Sampling and reference log-probs on a model sharded with FSDP2 over 2 CPU processes, for tests/integration/test_multiprocess.py:

    torchrun --nproc_per_node 2 tests/scripts/multiprocess_sharded_sampling.py OUTPUT_FOLDER

Each rank compares what the sharded model gives with what an unsharded copy of it gives on the same rows, and writes
the comparisons to OUTPUT_FOLDER/rank-{r}.json. The ranks' calls differ in every way that could desynchronise them:
prompt lengths, numbers of prompts (none at all in one call), token budgets (rows finish at different steps).
"""

import copy
import json
import os
import sys

import torch
from accelerate import Accelerator
from x_transformers import Decoder, TransformerWrapper

from self_rewarding_lm_pytorch import sample
from self_rewarding_lm_pytorch.models.sharding import fully_shard_model, is_fully_sharded
from self_rewarding_lm_pytorch.training.logprobs import reference_logprobs


def x_transformers_model():
    torch.manual_seed(0)
    return TransformerWrapper(num_tokens=64, max_seq_len=64, attn_layers=Decoder(dim=32, depth=2, heads=2, rotary_pos_emb=True))


def hf_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    from self_rewarding_lm_pytorch.models.hf import HFCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.2)
    return HFCausalLM(LlamaForCausalLM(config))


def compare(build, rank: int) -> dict:
    plain = build()
    sharded = fully_shard_model(copy.deepcopy(plain))
    assert is_fully_sharded(sharded) and not is_fully_sharded(plain)
    generator = torch.Generator().manual_seed(100 + rank)
    lengths = [[3, 7, 5], [9]][rank]
    prompts = [torch.randint(1, 64, (n,), generator=generator) for n in lengths]
    budget = [4, 12][rank]  # rank 1's rows run 8 steps after rank 0's are finished
    results = {}
    for name, kwargs in dict(greedy=dict(temperature=0.0), sampled=dict(temperature=1.0, generator=7, num_samples=2)).items():
        want = sample(plain, prompts, max_new_tokens=budget, **kwargs)
        got = sample(sharded, prompts, max_new_tokens=budget, **kwargs)
        results[name] = torch.equal(want, got)

    # a call where rank 1 has no prompts, then one where rank 0 has none
    for empty_rank in (1, 0):
        rows = [] if rank == empty_rank else prompts
        got = sample(sharded, rows, max_new_tokens=budget, temperature=0.0)
        want = sample(plain, rows, max_new_tokens=budget, temperature=0.0) if rows else torch.empty(0, 0, dtype=torch.long)
        results[f"rank {empty_rank} empty"] = torch.equal(want, got)

    # reference log-probs of different numbers of sequences, none on rank 1
    seqs = [torch.cat([p, p]) for p in prompts] if rank == 0 else []
    prompt_len = torch.tensor([len(p) for p in prompts] if rank == 0 else [], dtype=torch.long)
    want, got = reference_logprobs(plain, seqs, prompt_len, -1), reference_logprobs(sharded, seqs, prompt_len, -1)
    results["logprobs"] = want.shape == got.shape and torch.allclose(want, got, atol=1e-4)
    return results


def main(folder: str):
    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index
    results = {f"x-transformers {k}": v for k, v in compare(x_transformers_model, rank).items()}
    results.update({f"hf {k}": v for k, v in compare(hf_llama, rank).items()})
    with open(os.path.join(folder, f"rank-{rank}.json"), "w") as f:
        json.dump(results, f)
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main(sys.argv[1])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # a two-process gloo run can hang at interpreter exit (see the platform notes)
