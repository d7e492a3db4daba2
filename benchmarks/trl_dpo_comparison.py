"""The DPO loss and logged metrics of this library against TRL's `DPOTrainer`, on the same tiny Llama and pairs.

    python benchmarks/trl_dpo_comparison.py --trl-python /path/to/a/venv/with/trl/bin/python

Run from this library's environment; TRL runs in its own (its pins may differ), as a subprocess of this script. A
random LlamaForCausalLM (vocabulary 64, hidden 32, 2 layers) is the reference and a perturbed copy the policy; 8
pairs of random token ids (prompts of 2-5 tokens, responses of 1-7). For each loss and β, the library's `DPO`
(live reference) and TRL's `DPOTrainer.compute_loss` (live reference, dropout disabled, `bf16=False`: TRL's
default `bf16=True` would run its reference, prepared by Accelerate, under bf16 autocast) score the same batch, and
the script prints each side's loss and metrics and their largest absolute difference; each case runs twice on the
library's side, with the live reference and with reference log-probs stored in the loss's reduction (what
`DPOTrainer` precomputes by default; per token for IPO and per-token sigmoid). The RPO term is the
library's `nll_weight=1.0` against TRL's `loss_type=["sigmoid", "sft"]`, `loss_weights=[1.0, 1.0]`; per-token
sigmoid is `logp_reduction="mean"` against TRL's `sigmoid_norm`.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

# (name, the library's DPO settings, TRL's DPOConfig settings)
LOSSES = [
    ("sigmoid", {}, {"loss_type": ["sigmoid"]}),
    ("hinge", {"loss_type": "hinge"}, {"loss_type": ["hinge"]}),
    ("ipo", {"loss_type": "ipo"}, {"loss_type": ["ipo"]}),
    ("rpo", {"nll_weight": 1.0}, {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 1.0]}),
    ("sigmoid per token", {"logp_reduction": "mean"}, {"loss_type": ["sigmoid_norm"]}),
]
BETAS = [0.1, 0.5]
METRICS = ["loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
           "logps/rejected"]


def make_models(folder: Path):
    """A random tiny Llama (the reference) and a perturbed copy (the policy), saved under `folder`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)
    reference = LlamaForCausalLM(config)
    reference.save_pretrained(folder / "reference")
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.2 * torch.randn_like(p))
    reference.save_pretrained(folder / "policy")


def make_pairs(n: int = 8, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    draw = lambda low, high: [rng.randint(3, 63) for _ in range(rng.randint(low, high))]
    return [{"prompt_ids": draw(2, 5), "chosen_ids": draw(1, 7), "rejected_ids": draw(1, 7)} for _ in range(n)]


def trl_side(folder: Path, pairs: list[dict]) -> dict:
    """TRL's loss and metrics (runs in TRL's environment)."""
    import trl
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(64)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="t63"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="t0", bos_token="t1", eos_token="t2",
                                        unk_token="t63")
    text = Dataset.from_dict({"prompt": ["t3 t4"], "chosen": [" t5"], "rejected": [" t6"]})
    results = {"version": trl.__version__}
    for name, _, settings in LOSSES:
        for beta in BETAS:
            policy = LlamaForCausalLM.from_pretrained(folder / "policy")
            reference = LlamaForCausalLM.from_pretrained(folder / "reference")
            args = trl.DPOConfig(output_dir=str(folder / "trl"), beta=beta, report_to=[], use_cpu=True, bf16=False,
                                 per_device_train_batch_size=len(pairs), **settings)
            trainer = trl.DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=text,
                                     processing_class=tokenizer)
            batch = trainer.data_collator(pairs)
            trainer.model.train()
            loss = trainer.compute_loss(trainer.model, batch)
            logged = {k: v[-1] for k, v in trainer._metrics["train"].items()}
            results[f"{name} beta={beta}"] = {"loss": loss.item(), **{k: logged[k] for k in METRICS[1:]}}
    return results


def library_side(folder: Path, pairs: list[dict]) -> dict:
    """This library's loss and metrics."""
    from torch import nn
    from transformers import LlamaForCausalLM

    from self_rewarding_lm_pytorch.training.dpo_batches import DPOCollate
    from self_rewarding_lm_pytorch.training.dpo_objective import DPO
    from self_rewarding_lm_pytorch.training.logprobs import reference_logprobs

    class Logits(nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, ids):
            return self.model(ids).logits

    batch = DPOCollate(-1)([{
        "chosen": torch.tensor(p["prompt_ids"] + p["chosen_ids"]),
        "rejected": torch.tensor(p["prompt_ids"] + p["rejected_ids"]),
        "prompt_len": len(p["prompt_ids"]),
    } for p in pairs])
    results = {}
    for name, settings, _ in LOSSES:
        for beta in BETAS:
            policy = Logits(LlamaForCausalLM.from_pretrained(folder / "policy"))
            reference = Logits(LlamaForCausalLM.from_pretrained(folder / "reference"))
            dpo = DPO(policy, beta, ref_model=reference, **settings).train()
            loss, metrics = dpo(**batch)
            results[f"{name} beta={beta}"] = {"loss": loss.item(), **{k: metrics[k].item() for k in METRICS[1:]}}
            # the reference log-probs stored with the pairs (what DPOTrainer precomputes), in the loss's reduction
            seqs = [s[s != -1] for s in torch.cat([batch["chosen"], batch["rejected"]])]
            stored = reference_logprobs(reference, seqs, batch["prompt_len"].repeat(2), -1, dpo.logp_reduction)
            dpo = DPO(policy, beta, precomputed_reference=True, **settings).train()
            loss, metrics = dpo(**batch, chosen_ref_logp=stored[:len(pairs)], rejected_ref_logp=stored[len(pairs):])
            results[f"{name} beta={beta}, stored reference"] = {"loss": loss.item(),
                                                                **{k: metrics[k].item() for k in METRICS[1:]}}
    return results


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--trl-python", help="a Python with TRL installed")
    parser.add_argument("--trl-side", help=argparse.SUPPRESS)  # the folder, when this runs as TRL's subprocess
    args = parser.parse_args()
    if args.trl_side:
        folder = Path(args.trl_side)
        print(json.dumps(trl_side(folder, json.loads((folder / "pairs.json").read_text()))))
        return

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_models(folder)
        pairs = make_pairs()
        (folder / "pairs.json").write_text(json.dumps(pairs))
        done = subprocess.run([args.trl_python, __file__, "--trl-side", str(folder)], capture_output=True, text=True,
                              check=False)
        if done.returncode:
            sys.exit(done.stderr)
        trl = json.loads(done.stdout.strip().splitlines()[-1])
        ours = library_side(folder, pairs)

    print(f"TRL {trl.pop('version')}; torch {torch.__version__}; 8 pairs; columns: library | TRL | abs difference")
    for case, values in ours.items():
        print(f"\n{case}")
        for metric in METRICS:
            a, b = values[metric], trl[case.split(",")[0]][metric]
            print(f"  {metric:20s} {a:12.6f} {b:12.6f} {abs(a - b):10.2e}")
    worst = max(abs(values[m] - trl[case.split(",")[0]][m]) for case, values in ours.items() for m in METRICS)
    print(f"\nlargest absolute difference: {worst:.2e}")


if __name__ == "__main__":
    main()
