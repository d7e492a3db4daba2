"""Resume inside a stage after kill -9: each stage's loop continues from its last save, and the final weights
equal those of an uninterrupted run (one process, CPU, same seed)."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).parents[1] / "scripts" / "resume_pipeline.py"


def run(folder: Path, kill_at: str | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, str(SCRIPT), str(folder)] + ([kill_at] if kill_at else [])
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}) as process:
        stdout, stderr = process.communicate(timeout=300)
    done = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    done.pid = process.pid
    return done


def test_kill_9_in_every_stage_resumes_to_the_uninterrupted_weights(tmp_path):
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
