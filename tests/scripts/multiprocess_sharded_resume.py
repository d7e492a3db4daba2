"""Resuming inside a stage on a model sharded with FSDP2 over 2 CPU processes, for tests/integration/test_multiprocess.py:

    torchrun --nproc_per_node 2 tests/scripts/multiprocess_sharded_resume.py OUTPUT_FOLDER

SFT and DPO (on pairs without reference log-probs: computed before training, 7 pairs so the ranks get 4 and 3)
save a step checkpoint every step. The script trains each once, then deletes the last steps' checkpoints, as a run
killed after step 2 would have left them, and trains again from a fresh model: the second run resumes from step 2
(full weights and optimizer state loaded back into the sharded model). Rank 0 writes OUTPUT_FOLDER/result.json: the
largest difference between the weights of the uninterrupted and the resumed run, per stage, and whether the digest of
the initial weights that step saves record is the same for the sharded model as for the same model whole.
"""

import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from x_transformers import Decoder, TransformerWrapper

from self_rewarding_lm_pytorch import DPOTrainer, SFTTrainer
from self_rewarding_lm_pytorch.models.sharding import full_state_dict, fully_shard_model
from self_rewarding_lm_pytorch.tasks.sort_digits import CharTokenizer, SortDigitsTask
from self_rewarding_lm_pytorch.training.train_state import weights_digest

TOKENIZER = CharTokenizer()
STEPS = 4


def whole_model() -> TransformerWrapper:
    torch.manual_seed(0)
    return TransformerWrapper(num_tokens=TOKENIZER.num_tokens, max_seq_len=48, attn_layers=Decoder(dim=32, depth=2, heads=2))


def sharded_model(accelerator: Accelerator):
    return fully_shard_model(whole_model())


def pair(prompt: str) -> dict:
    digits, prompt_ids, eos = prompt[5:-1].split(), TOKENIZER.encode(prompt), torch.tensor([TOKENIZER.eos_id])
    chosen, rejected = (TOKENIZER.encode(" " + " ".join(answer)) for answer in (sorted(digits), digits))
    return dict(chosen=torch.cat([prompt_ids, chosen, eos]), rejected=torch.cat([prompt_ids, rejected, eos]),
                prompt_len=len(prompt_ids))


def run(accelerator: Accelerator, folder: Path, stage: str) -> dict:
    model = sharded_model(accelerator)
    settings = dict(batch_size=2, num_train_steps=STEPS, learning_rate=1e-3, end_learning_rate=1e-4, checkpoint_every=1)
    task = SortDigitsTask(length=3, seed=0)
    if stage == "sft":
        SFTTrainer(model, accelerator=accelerator, checkpoint_folder=folder, train_dataset=task.instruction_examples(16),
                   grad_accum_steps=1, dropout=0.0, **settings).train()
    else:
        DPOTrainer(model, [pair(p) for p in task.prompts(7)], accelerator=accelerator, checkpoint_folder=folder,
                   dropout=0.0, **settings).train()
    return full_state_dict(accelerator, model)


def main(output: str):
    accelerator = Accelerator(cpu=True)
    # a model Accelerate shards in place is sharded when the next stage starts, whole when a resumed run loads it
    result = {"same digest sharded and whole": weights_digest(sharded_model(accelerator)) == weights_digest(whole_model())}
    for stage, prefix in (("sft", "sft"), ("dpo", "dpo")):
        folder = Path(output) / stage
        uninterrupted = run(accelerator, folder, stage)
        if accelerator.is_main_process:  # as a run killed after step 2 leaves the folder
            for step in range(3, STEPS + 1):
                (folder / f"{prefix}-step-{step}.pt").unlink()
        accelerator.wait_for_everyone()
        resumed = run(accelerator, folder, stage)
        if accelerator.is_main_process:
            result[stage] = max(float((uninterrupted[k] - resumed[k]).abs().max()) for k in uninterrupted)
            result[f"{stage} steps saved"] = sorted(p.name for p in folder.glob("*.pt"))
    if accelerator.is_main_process:
        (Path(output) / "result.json").write_text(json.dumps(result))
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1])
