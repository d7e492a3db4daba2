"""Two processes on CPU (gloo), launched with torchrun: the whole pipeline, its files and its synchronisation,
with data parallelism (DDP) and with the model fully sharded (FSDP2)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import run_watched
from x_transformers import Decoder, TransformerWrapper

from self_rewarding_lm_pytorch.storage.checkpoint import load_checkpoint
from self_rewarding_lm_pytorch.storage.pair_store import DPODataset

SCRIPT = Path(__file__).parents[1] / "scripts" / "multiprocess_pipeline.py"
SHARDED_SAMPLING_SCRIPT = Path(__file__).parents[1] / "scripts" / "multiprocess_sharded_sampling.py"
SHARDED_RESUME_SCRIPT = Path(__file__).parents[1] / "scripts" / "multiprocess_sharded_resume.py"
DPO_RESUME_SCRIPT = Path(__file__).parents[1] / "scripts" / "multiprocess_dpo_resume.py"
PREFERENCE_STAGES = ("stage-02-self-reward-dpo", "stage-03-external-reward-dpo")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(folder: Path, script: Path = SCRIPT, *args: str, **env) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
               str(script), str(folder), *args]
    # a desynchronised sharded run deadlocks, silently: the hang guard turns that into a failure
    return run_watched(command, env={**os.environ, "OMP_NUM_THREADS": "1", **env})


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One data-parallel run of the pipeline, shared by the tests below."""
    folder = tmp_path_factory.mktemp("ddp")
    return folder, launch(folder)


def test_pipeline_on_two_processes(ddp_run):
    """Under 60 s idle (measured: 59 s at load 14 on the shared 2 cores)."""
    tmp_path, run = ddp_run
    assert run.returncode == 0, run.stderr[-3000:]

    # training is synchronised: both processes end with the same weights
    rank_0, rank_1 = (torch.load(tmp_path / f"rank-{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(rank_0[k], rank_1[k]) for k in rank_0)

    # one checkpoint per stage, written once (no temporary files left), holding those weights
    checkpoints = tmp_path / "checkpoints"
    names = sorted(p.name for p in checkpoints.iterdir() if p.suffix == ".pt")
    assert names == ["stage-00-sft.pt", "stage-01-spin.pt", "stage-02-self-reward-dpo.pt", "stage-03-external-reward-dpo.pt"]
    assert not list(checkpoints.rglob(".*tmp*"))
    last = torch.load(checkpoints / names[-1], weights_only=True)["model"]
    assert all(torch.equal(last[k], rank_0[k]) for k in rank_0)

    # split pair generation: at most one pair per prompt of the 9, no prompt used twice, both processes' in the file
    for stage in PREFERENCE_STAGES:
        pairs = DPODataset(checkpoints / f"{stage}.pairs")
        prompts = [r["prompt_index"] for r in pairs.records()]
        assert 1 <= len(pairs) <= 9 and len(set(prompts)) == len(pairs)

    # progress bars and prints come from the main process only
    assert run.stdout.count("stage 0: SFTConfig") == 1

    # a second launch of the same run resumes: every stage is finished, nothing is trained again
    again = launch(tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("resuming after stage 3") == 1 and "stage 0: SFTConfig" not in again.stdout


def test_a_failing_process_fails_the_run_without_hanging(tmp_path):
    """Under 30 s idle (measured: 30 s at load 14 on the shared 2 cores)."""
    run = launch(tmp_path, PIPELINE_FAIL_ON_RANK="1")
    assert run.returncode != 0
    assert "deliberate failure on rank 1" in run.stderr


def test_fully_sharded_pipeline_ends_and_makes_the_pairs_of_data_parallel(ddp_run, tmp_path):
    """The same pipeline, the model sharded with FSDP2 (`fully_shard_model`), ranks holding prompts of different lengths
    and numbers (one rank has none in the last batch) whose answers end at different steps: it ends, and makes the
    very pairs of the data-parallel run with the same seed.
    Under 70 s idle (measured: 66 s at load 13 on the shared 2 cores)."""
    ddp_folder, ddp = ddp_run
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    run = launch(tmp_path, PIPELINE_SHARD="1")
    assert run.returncode == 0, run.stderr[-3000:]

    for stage in PREFERENCE_STAGES:
        sharded, data_parallel = (DPODataset(folder / "checkpoints" / f"{stage}.pairs") for folder in (tmp_path, ddp_folder))
        assert len(sharded) == len(data_parallel) >= 1
        assert [(r["prompt_index"], r["chosen"], r["rejected"]) for r in sharded.records()] == \
            [(r["prompt_index"], r["chosen"], r["rejected"]) for r in data_parallel.records()]
        for i in range(len(sharded)):
            a, b = sharded[i], data_parallel[i]
            assert torch.equal(a["chosen"], b["chosen"]) and torch.equal(a["rejected"], b["rejected"])
            # equal up to float rounding, not bit for bit: DDP all-reduces gradients, FSDP2 reduce-scatters them (another
            # summation order), and Adam's normalised step turns last-bit gradient differences into ~lr-sized weight
            # differences (measured: 4e-4 at most after four stages, log-prob sums within 1e-2)
            for key in ("chosen_ref_logp", "rejected_ref_logp"):
                assert torch.allclose(a[key], b[key], atol=0.05), (stage, i, key)

    # the checkpoint holds the gathered weights: it loads strictly into an unsharded model, equal to the final weights
    model = TransformerWrapper(num_tokens=128, max_seq_len=48, attn_layers=Decoder(dim=32, depth=2, heads=2))
    load_checkpoint(model, tmp_path / "checkpoints" / "stage-03-external-reward-dpo.pt")
    final = torch.load(tmp_path / "rank-0.pt", weights_only=True)
    assert all(torch.equal(model.state_dict()[k], final[k]) for k in final)
    data_parallel_final = torch.load(ddp_folder / "rank-0.pt", weights_only=True)
    assert max((final[k] - data_parallel_final[k]).abs().max() for k in final) < 5e-3

    # resuming loads that full checkpoint back into the sharded model (every stage is finished: nothing trains)
    (tmp_path / "rank-0.pt").unlink()
    again = launch(tmp_path, PIPELINE_SHARD="1")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming after stage 3" in again.stdout
    resumed = torch.load(tmp_path / "rank-0.pt", weights_only=True)
    assert all(torch.equal(resumed[k], final[k]) for k in final)


def test_sharded_sampling_equals_unsharded_sampling(tmp_path):
    """Sampler and reference log-probs on an FSDP2-sharded x-transformers model and HF Llama: the rows each rank gets
    equal an unsharded copy's, whatever the other rank does (see the script for the cases).
    Under 40 s idle (measured: 38 s at load 13 on the shared 2 cores)."""
    pytest.importorskip("transformers")
    run = launch(tmp_path, SHARDED_SAMPLING_SCRIPT)
    assert run.returncode == 0, run.stderr[-3000:]
    for rank in (0, 1):
        results = json.loads((tmp_path / f"rank-{rank}.json").read_text())
        assert len(results) == 10 and all(results.values()), results


def test_a_sharded_stage_resumes_inside_the_stage_as_if_never_stopped(tmp_path):
    """SFT and DPO (reference log-probs computed up front) on an FSDP2-sharded model, resumed from their step-2
    checkpoint: the gathered weights and optimizer state go back into the sharded model, and the resumed run ends with
    the uninterrupted run's weights (a fresh optimizer state would move them by about the learning rate). The digest
    of the initial weights in the step saves is that of the same model unsharded.
    Under 55 s idle (measured: 54 s at load 11 on the shared 2 cores)."""
    run = launch(tmp_path, SHARDED_RESUME_SCRIPT)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "resuming sft from step 2" in run.stdout and "resuming dpo from step 2" in run.stdout, run.stdout[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    # equal: the DPO resume is at an epoch boundary, where the next epoch's shuffle comes from the saved generator
    assert result["sft"] == 0 and result["dpo"] == 0, result
    assert result["same digest sharded and whole"], result  # the step saves' initial weights, whatever the layout
    for stage in ("sft", "dpo"):
        assert result[f"{stage} steps saved"] == [f"{stage}-step-{step}.pt" for step in range(1, 5)]


@pytest.mark.parametrize("mode", ["ddp", "fsdp2"])
def test_dpo_killed_on_two_processes_resumes_to_the_uninterrupted_weights(tmp_path, mode):
    """A DPO stage on 2 processes, data-parallel or sharded with FSDP2, dropout on and each rank its own RNG, SIGKILLed
    after step 5 and resumed from its step-4 save (inside the second epoch; the third's shuffle follows) ends with the
    uninterrupted run's weights and losses to float tolerance (measured: equal, 0.0). The same resume with a fresh
    optimizer state (the script's mutant) must miss them (measured: 2.3e-3). Two launches of 2 processes.
    Under 45 s idle (measured: 39/44 s at load 8 on the shared 2 cores)."""
    first = launch(tmp_path, DPO_RESUME_SCRIPT, mode, "first")
    assert first.returncode != 0 and "Signal 9 (SIGKILL) received" in first.stderr, first.stderr[-3000:]
    run = launch(tmp_path, DPO_RESUME_SCRIPT, mode, "resume")
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("resuming dpo from step 4") == 2, run.stdout[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["saved"] == ["dpo-step-2.pt", "dpo-step-4.pt"], result
    assert result["optimizer state size"] == result["parameters"], result  # every parameter's state, not a shard
    assert result["resumed"]["weights"] <= 1e-6 and result["resumed"]["losses"] <= 1e-6, result
    assert result["fresh optimizer"]["weights"] > 1e-4, result  # the comparison tells a wrong resume from a right one


def test_a_rank_killed_mid_training_ends_the_run_naming_it(tmp_path):
    """Rank 1 is SIGKILLed after its first SFT step: the launch ends (no hang) and names the dead rank.
    Under 30 s idle (measured: 29 s at load 13 on the shared 2 cores)."""
    run = launch(tmp_path, PIPELINE_KILL_RANK_IN_SFT="1", PIPELINE_COLLECTIVE_TIMEOUT_S="20")
    assert run.returncode != 0
    assert "rank      : 1" in run.stderr and "SIGKILL" in run.stderr


@pytest.mark.slow
def test_a_frozen_rank_makes_the_others_fail_within_the_collective_timeout(tmp_path):
    """Rank 1 freezes (SIGSTOP: alive, so the launcher sees no failure): rank 0 gives up after the 10 s collective
    timeout with an error that says what happened, instead of waiting forever."""
    run = launch(tmp_path, PIPELINE_STOP_RANK_IN_SFT="1", PIPELINE_COLLECTIVE_TIMEOUT_S="10")
    assert run.returncode != 0
    assert "Timed out" in run.stderr and "process 0 of 2 lost the others" in run.stderr
