"""Resume inside a stage after kill -9: each stage's loop continues from its last save, and the final weights
equal those of an uninterrupted run (one process, CPU, same seed). A save holds each process's RNG states and data
position: one made by another number of processes, or without them, is refused; so is one made from other initial
weights."""

import copy
import os
import signal
import sys
from pathlib import Path

import pytest
import torch
from accelerate.data_loader import prepare_data_loader
from helpers import run_watched
from torch.utils.data import DataLoader

from self_rewarding_lm_pytorch import SFTTrainer
from self_rewarding_lm_pytorch.storage.checkpoint import atomic_torch_save, read_checkpoint
from self_rewarding_lm_pytorch.tasks.sort_digits import CharTokenizer, SortDigitsTask
from self_rewarding_lm_pytorch.training.train_state import loader_generator

SCRIPT = Path(__file__).parents[1] / "scripts" / "resume_pipeline.py"


def run(folder: Path, kill_at: str | None = None):
    return run_watched([sys.executable, str(SCRIPT), str(folder)] + ([kill_at] if kill_at else []),
                       env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_kill_9_in_every_stage_resumes_to_the_uninterrupted_weights(tmp_path):
    """Five runs of a three-stage plan, one process each. About 30 s idle."""
    whole = run(tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]

    resumed = tmp_path / "resumed"
    # killed at step 7 of SFT (saved at 6), step 3 of DPO (saved at 2, an epoch boundary: 2 batches of 4 pairs... 6
    # pairs), and step 1 of SPIN's second iteration (nothing saved in it yet: its pairs are on disk)
    for kill_at, expected in [("sft:7", None), ("dpo:3", "resuming sft from step 6"),
                              ("spin iteration-1:3", "resuming dpo from step 2")]:
        killed = run(resumed, kill_at)
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
        if expected:
            assert expected in killed.stdout, killed.stdout[-2000:]
        # a write the kill cut short leaves a temporary file; the next run removes it
        (resumed / f".stage-00-sft.pt.tmp-{killed.pid}").write_bytes(b"half a checkpoint")

    last = run(resumed)
    assert last.returncode == 0, last.stderr[-3000:]
    assert "resuming spin iteration-1 from step 2" in last.stdout
    assert not list(resumed.rglob(".*.tmp-*"))

    a = torch.load(tmp_path / "whole" / "final.pt", weights_only=True)
    b = torch.load(resumed / "final.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]


def sft(char_model, folder, steps):
    return SFTTrainer(char_model, train_dataset=SortDigitsTask(length=3, seed=0).instruction_examples(8), batch_size=4,
                      grad_accum_steps=1, num_train_steps=steps, learning_rate=1e-3, checkpoint_every=1,
                      accelerate_kwargs={"cpu": True}, checkpoint_folder=folder)


def rewrite(path: Path, change):
    state = read_checkpoint(path)
    change(state)
    atomic_torch_save(state, path)


def test_sft_alone_resumes_exactly_and_only_onto_the_weights_it_started_from(make_transformer, tmp_path):
    """SFTTrainer used alone, as a script reruns it after a kill: four steps uninterrupted, and four stopped after
    step 3's save. A rerun on that folder with a model of other initial weights is refused, naming them, before it
    loads anything (the step saves used to record the loop's settings and data only, so it silently went on from the
    old run's weights); built on the same initial weights it resumes from step 3 and ends as the uninterrupted run,
    bit for bit. Under 1 s idle (measured: 0.5 s at load 6 on the shared 2 cores)."""
    start = make_transformer(seed=0, num_tokens=CharTokenizer.num_tokens, max_seq_len=48, dim=32, depth=1)
    whole = copy.deepcopy(start)
    torch.manual_seed(0)  # the shuffle: both runs draw the same batches
    whole_history = sft(whole, tmp_path / "whole", steps=4).train()

    folder = tmp_path / "stopped"
    torch.manual_seed(0)
    sft(copy.deepcopy(start), folder, steps=4).train()
    (folder / "sft-step-4.pt").unlink()  # stopped after step 3's save (inside the second epoch)

    other = make_transformer(seed=1, num_tokens=CharTokenizer.num_tokens, max_seq_len=48, dim=32, depth=1)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match=r"sft-step-3.pt was saved by sft with other settings, data or initial "
                                         r"weights \(changed: initial_weights\) \(the model the trainer is built on "
                                         r"has other weights.*delete .*stopped \(overwrite_checkpoints=True\)"):
        sft(other, folder, steps=4).train()
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in before.items())  # refused before loading

    resumed = copy.deepcopy(start)
    assert sft(resumed, folder, steps=4).train() == whole_history
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in whole.state_dict().items())


def test_a_save_of_another_number_of_processes_or_without_their_states_is_refused(char_model, tmp_path):
    """Two SFT steps of a tiny model (about 2 s idle); the step-1 save then claims 2 processes, or holds no per-process
    states, or no initial weights (an older save): resuming inside the stage from it is refused, saying why and what
    to do. Each rerun is built on the initial weights, as a rerun of the script is."""
    initial = {k: v.clone() for k, v in char_model.state_dict().items()}
    sft(char_model, tmp_path, steps=2).train()
    char_model.load_state_dict(initial)
    (tmp_path / "sft-step-2.pt").unlink()  # as a run killed after step 1 leaves the folder
    path = tmp_path / "sft-step-1.pt"
    assert len(read_checkpoint(path)["ranks"]) == 1

    rewrite(path, lambda state: state["ranks"].append(state["ranks"][0]))
    refused = r"sft-step-1.pt was saved by 2 process\(es\) and this run has 1.*Relaunch with 2"
    with pytest.raises(ValueError, match=refused):
        sft(char_model, tmp_path, steps=2).train()

    rewrite(path, lambda state: state.pop("ranks"))
    with pytest.raises(ValueError, match=r"sft-step-1.pt holds no per-process RNG states and data positions"):
        sft(char_model, tmp_path, steps=2).train()

    rewrite(path, lambda state: state["fingerprint"].pop("initial_weights"))  # an older save, made without them
    with pytest.raises(ValueError, match=r"sft-step-1.pt was saved by sft .*\(changed: initial_weights\) \(the save "
                                         r"records no initial weights: an earlier version of the library made it\)"):
        sft(char_model, tmp_path, steps=2).train()


def test_a_finished_loop_resumes_on_any_number_of_processes(char_model, tmp_path):
    """One SFT step (about 1 s idle). A finished loop trains no more, so its per-process states are not needed: its
    save, made by 2 processes, resumes on 1 with the weights and rows it holds (the rerun is built on the initial
    weights, and ends on the trained ones)."""
    initial = {k: v.clone() for k, v in char_model.state_dict().items()}
    history = sft(char_model, tmp_path, steps=1).train()
    rewrite(tmp_path / "sft-step-1.pt", lambda state: state["ranks"].append(state["ranks"][0]))
    saved = {k: v.clone() for k, v in char_model.state_dict().items()}
    char_model.load_state_dict(initial)
    assert sft(char_model, tmp_path, steps=1).train() == history
    assert all(torch.equal(v, char_model.state_dict()[k]) for k, v in saved.items())


@pytest.mark.parametrize("processes", [1, 2])
def test_the_shuffling_generator_is_found_in_a_loader_prepared_for_any_number_of_processes(processes):
    """No training. On 2 processes Accelerate puts the sampler inside its per-process batch sampler, where
    `get_sampler` finds none: the shuffle was then neither saved nor restored, and a resume after the first epoch
    replayed the first epoch's order. Under 1 s idle."""
    generator = torch.Generator().manual_seed(0)
    loader = DataLoader(list(range(10)), batch_size=2, shuffle=True, generator=generator)
    prepared = prepare_data_loader(loader, torch.device("cpu"), num_processes=processes, process_index=processes - 1,
                                   put_on_device=False)
    assert loader_generator(prepared) is generator
