"""A DPO stage on 2 CPU processes killed mid-stage and resumed, for tests/integration/test_multiprocess.py:

    torchrun --nproc_per_node 2 tests/scripts/multiprocess_dpo_resume.py FOLDER ddp|fsdp2 first|resume

`first` trains the stage uninterrupted in FOLDER/whole (rank 0 writes its gathered final weights and logged rows to
FOLDER/whole.pt), then trains it again in FOLDER/killed and SIGKILLs rank 0 when step KILL_AT is done, before it is
saved (torchrun then ends rank 1): FOLDER/killed holds the step checkpoints up to the one before. `resume` copies
FOLDER/killed to FOLDER/fresh-optimizer, resumes FOLDER/killed, then resumes FOLDER/fresh-optimizer with the optimizer
restore replaced by nothing (a fresh optimizer state: the mutant the comparison must catch). Rank 0 writes
FOLDER/result.json: the largest difference of each resumed run's final weights and logged losses from the whole run's.

Dropout is on and each rank seeds its own RNG (`set_seed(device_specific=True)`): the ranks draw different dropout
masks, so a resume that restored rank 0's RNG on every rank would not give the whole run's weights. 11 pairs in
batches of 2 on 2 processes make 3 steps an epoch (the last batch evened out with repeated pairs); saves every 2
steps and a kill at step 5 resume from step 4, inside the second epoch (its shuffle is not the initial one), then
cross into the third.
"""

import json
import os
import shutil
import signal
import sys
from datetime import timedelta
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, set_seed
from x_transformers import Decoder, TransformerWrapper

from self_rewarding_lm_pytorch import DPOTrainer
from self_rewarding_lm_pytorch.models.sharding import full_state_dict, fully_shard_model
from self_rewarding_lm_pytorch.storage.checkpoint import read_checkpoint
from self_rewarding_lm_pytorch.tasks.sort_digits import CharTokenizer, SortDigitsTask
from self_rewarding_lm_pytorch.training import train_state
from self_rewarding_lm_pytorch.training.train_state import TrainState

TOKENIZER = CharTokenizer()
STEPS, EVERY, KILL_AT = 7, 2, 5


def pair(prompt: str) -> dict:
    digits, prompt_ids, eos = prompt[5:-1].split(), TOKENIZER.encode(prompt), torch.tensor([TOKENIZER.eos_id])
    chosen, rejected = (TOKENIZER.encode(" " + " ".join(answer)) for answer in (sorted(digits), digits))
    return {"chosen": torch.cat([prompt_ids, chosen, eos]), "rejected": torch.cat([prompt_ids, rejected, eos]),
            "prompt_len": len(prompt_ids)}


def fresh_model() -> TransformerWrapper:
    torch.manual_seed(0)  # the same initial weights on every rank
    return TransformerWrapper(num_tokens=TOKENIZER.num_tokens, max_seq_len=48,
                              attn_layers=Decoder(dim=32, depth=2, heads=2))


def train(accelerator: Accelerator, folder: Path, mode: str) -> tuple[dict, list[dict]]:
    """The stage from a fresh model; its gathered final weights (on rank 0) and its logged rows."""
    model = fresh_model()
    if mode == "fsdp2":
        fully_shard_model(model)
    set_seed(1, device_specific=True)  # then each rank its own RNG stream
    pairs = [pair(p) for p in SortDigitsTask(length=3, seed=0).prompts(11)]
    trainer = DPOTrainer(model, pairs, accelerator=accelerator,
                         checkpoint_folder=folder, batch_size=2, num_train_steps=STEPS, learning_rate=1e-3,
                         end_learning_rate=1e-4, checkpoint_every=EVERY, dropout=0.1)
    history = trainer.train()
    return full_state_dict(accelerator, model), history


def kill_at(step: int):
    """SIGKILL rank 0 when a loop is about to save `step` (after its update, before its checkpoint)."""
    save_if_due = TrainState.save_if_due

    def dying_save(state, at, **kwargs):
        if at == step and state.accelerator.is_main_process:
            os.kill(os.getpid(), signal.SIGKILL)
        return save_if_due(state, at, **kwargs)

    TrainState.save_if_due = dying_save


def difference(whole: dict, weights: dict, history: list[dict]) -> dict:
    return {"weights": max(float((whole["weights"][k] - weights[k]).abs().max()) for k in whole["weights"]),
            "losses": max(abs(a["loss"] - b["loss"]) for a, b in zip(whole["history"], history, strict=True))}


def main(folder: str, mode: str, phase: str):
    folder = Path(folder)
    accelerator = Accelerator(cpu=True, kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=1800))])
    if phase == "first":
        weights, history = train(accelerator, folder / "whole", mode)
        if accelerator.is_main_process:
            torch.save({"weights": weights, "history": history}, folder / "whole.pt")
        accelerator.wait_for_everyone()
        kill_at(KILL_AT)
        train(accelerator, folder / "killed", mode)
        raise AssertionError(f"the run was to be killed at step {KILL_AT}")

    if accelerator.is_main_process:
        shutil.copytree(folder / "killed", folder / "fresh-optimizer")
    accelerator.wait_for_everyone()
    whole = torch.load(folder / "whole.pt", weights_only=True)
    result = {"saved": sorted(p.name for p in (folder / "killed").glob("*.pt"))}
    # the saved optimizer state is the whole model's (a sharded one's gathered), not one rank's shard
    optimizer = read_checkpoint(folder / "killed" / f"dpo-step-{KILL_AT - 1}.pt")["optimizer"]
    result["optimizer state size"] = sum(state["exp_avg"].numel() for state in optimizer["state"].values())
    result["parameters"] = sum(p.numel() for p in fresh_model().parameters())
    weights, history = train(accelerator, folder / "killed", mode)
    result["resumed"] = accelerator.is_main_process and difference(whole, weights, history)

    train_state.load_full_optimizer_state_dict = lambda model, optimizer, state: None  # the optimizer stays fresh
    weights, history = train(accelerator, folder / "fresh-optimizer", mode)
    if accelerator.is_main_process:
        result["fresh optimizer"] = difference(whole, weights, history)
        (folder / "result.json").write_text(json.dumps(result))
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(*sys.argv[1:4])
    sys.stdout.flush()
    sys.stderr.flush()
    # a two-process gloo run can hang at interpreter exit (see the platform notes): leave at once
    os._exit(0)
