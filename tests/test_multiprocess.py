"""Two processes on CPU (gloo), launched with torchrun: the whole pipeline, its files and its synchronisation."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from self_rewarding_lm_pytorch import DPODataset

SCRIPT = Path(__file__).with_name("multiprocess_pipeline.py")
TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(folder: Path, **env) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
               str(SCRIPT), str(folder)]
    return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env})


def test_pipeline_on_two_processes(tmp_path):
    run = launch(tmp_path)
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

    # sharded pair generation: the requested count, no prompt used twice, both processes' prompts in the file
    for stage in ("stage-02-self-reward-dpo", "stage-03-external-reward-dpo"):
        pairs = DPODataset(checkpoints / f"{stage}.pairs")
        prompts = [r["prompt_index"] for r in pairs.records()]
        assert len(pairs) == 6 and len(set(prompts)) == 6

    # progress bars and prints come from the main process only
    assert run.stdout.count("stage 0: SFTConfig") == 1

    # a second launch of the same run resumes: every stage is finished, nothing is trained again
    again = launch(tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("resuming after stage 3") == 1 and "stage 0: SFTConfig" not in again.stdout


def test_a_failing_process_fails_the_run_without_hanging(tmp_path):
    run = launch(tmp_path, PIPELINE_FAIL_ON_RANK="1")
    assert run.returncode != 0
    assert "deliberate failure on rank 1" in run.stderr


def test_a_rank_killed_mid_training_ends_the_run_naming_it(tmp_path):
    """Rank 1 is SIGKILLed after its first SFT step: the launch ends (no hang) and names the dead rank."""
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
