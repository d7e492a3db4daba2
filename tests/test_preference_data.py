import json
import os

import pytest
import torch

from self_rewarding_lm_pytorch.storage.integrity import CorruptFileError
from self_rewarding_lm_pytorch.storage.pair_store import GROW_ROWS, DPODataset, PreferenceDataWriter


def pairs(n, offset=0):
    return dict(
        chosen=[torch.tensor([1, 2, 3 + i + offset]) for i in range(n)],
        rejected=[torch.tensor([1, 2, 40 + i + offset, 5]) for i in range(n)],
        prompt_len=[2] * n,
        chosen_reward=[5.0] * n,
        rejected_reward=[1.0] * n,
        records=[dict(pair=i + offset) for i in range(n)],
        chosen_ref_logp=[-1.0 - i for i in range(n)],
        rejected_ref_logp=[-2.0 - i for i in range(n)],
    )


def writer(folder, **overrides):
    settings = dict(capacity=5, max_len=6, pad_id=-1, with_ref_logps=True) | overrides
    return PreferenceDataWriter(folder, **settings)


def test_written_pairs_read_back_padded_with_their_values(tmp_path):
    writer(tmp_path).append(**pairs(2))
    data = DPODataset(tmp_path)
    assert len(data) == 2 and data.has_ref_logps
    item = data[1]
    assert item["chosen"].tolist() == [1, 2, 4, -1, -1, -1]
    assert item["rejected"].tolist() == [1, 2, 41, 5, -1, -1]
    assert item["prompt_len"].item() == 2
    assert item["chosen_ref_logp"].item() == -2.0 and item["rejected_reward"].item() == 1.0
    assert data.records() == [dict(pair=0), dict(pair=1)]
    with pytest.raises(IndexError):
        data[2]


def test_a_second_writer_resumes_after_the_committed_pairs_and_stops_at_capacity(tmp_path):
    writer(tmp_path).append(**pairs(3))
    resumed = writer(tmp_path)
    assert resumed.num_pairs == 3
    assert resumed.append(**pairs(4, offset=3)) == 2  # capacity 5
    data = DPODataset(tmp_path)
    assert [data[i]["chosen"][2].item() for i in range(5)] == [3, 4, 5, 6, 7]
    assert [r["pair"] for r in data.records()] == [0, 1, 2, 3, 4]


def test_uncommitted_jsonl_lines_from_a_killed_run_are_dropped_on_resume(tmp_path):
    writer(tmp_path).append(**pairs(2))
    with open(tmp_path / "pairs.jsonl", "a") as f:  # a run killed after the JSONL write, before the commit
        f.write(json.dumps(dict(pair="uncommitted")) + "\n")
    resumed = writer(tmp_path)
    resumed.append(**pairs(1, offset=2))
    assert [r["pair"] for r in DPODataset(tmp_path).records()] == [0, 1, 2]


def test_resuming_with_other_settings_is_refused(tmp_path):
    writer(tmp_path).append(**pairs(1))
    with pytest.raises(ValueError, match="other settings"):
        writer(tmp_path, max_len=8)


def test_too_long_sequences_and_missing_reference_logps_are_errors(tmp_path):
    with pytest.raises(ValueError, match="at most 6"):
        writer(tmp_path).append(**(pairs(1) | dict(chosen=[torch.arange(7)])))
    with pytest.raises(ValueError, match="ref_logp"):
        writer(tmp_path / "b").append(**(pairs(1) | dict(chosen_ref_logp=None)))


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="meta.json"):
        DPODataset(tmp_path)


def committed(tmp_path, n=3):
    writer(tmp_path).append(**pairs(n))
    return tmp_path


def flip(path, offset, length=8):
    data = bytearray(path.read_bytes())
    data[offset : offset + length] = bytes(255 - b for b in data[offset : offset + length])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage, named",
    [
        (lambda d: flip(d / "pairs.jsonl", 5), "pairs.jsonl"),  # a garbled record
        (lambda d: (d / "pairs.jsonl").write_bytes(b""), "pairs.jsonl"),  # emptied
        (lambda d: (d / "pairs.jsonl").unlink(), "pairs.jsonl"),  # missing
        (lambda d: (d / "pairs.jsonl").write_bytes((d / "pairs.jsonl").read_bytes()[:-3]), "pairs.jsonl"),  # half a line
        (lambda d: flip(d / "chosen.npy", 128 + 8), "chosen.npy"),  # a garbled committed row
        (lambda d: flip(d / "prompt_len.npy", 10), "prompt_len.npy"),  # a garbled header
        (lambda d: (d / "rejected.npy").write_bytes((d / "rejected.npy").read_bytes()[:100]), "rejected.npy"),  # truncated
        (lambda d: (d / "meta.json").write_text((d / "meta.json").read_text()[:40]), "meta.json"),  # truncated
        (lambda d: (d / "meta.json").write_text((d / "meta.json").read_text().replace('"num_pairs": 3', '"num_pairs": 2')),
         "meta.json"),  # edited
    ],
    ids=["jsonl-garbled", "jsonl-empty", "jsonl-missing", "jsonl-short", "array-row", "array-header", "array-truncated",
         "meta-truncated", "meta-edited"],
)
def test_damaged_files_are_refused_naming_the_file_on_resume_and_on_read(tmp_path, damage, named):
    damage(committed(tmp_path))
    with pytest.raises(CorruptFileError, match=named.replace(".", r"\.")):
        writer(tmp_path)
    with pytest.raises(CorruptFileError, match=named.replace(".", r"\.")):
        DPODataset(tmp_path)


def test_a_kill_during_the_repair_of_the_jsonl_loses_no_committed_record(tmp_path, monkeypatch):
    """The repair cuts pairs.jsonl back to its committed length; the original rewrote the file, and a second kill
    inside that rewrite wiped every committed record."""
    committed(tmp_path)
    with open(tmp_path / "pairs.jsonl", "a") as f:
        f.write('{"pair": "uncommitted"}\n{"pair": "half')

    real_truncate = os.truncate

    def killed_midway(path, length):
        raise KeyboardInterrupt  # the moment of the kill

    monkeypatch.setattr(os, "truncate", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        writer(tmp_path)
    monkeypatch.setattr(os, "truncate", real_truncate)
    resumed = writer(tmp_path)
    resumed.append(**pairs(1, offset=3))
    assert [r["pair"] for r in DPODataset(tmp_path).records()] == [0, 1, 2, 3]


def test_non_finite_reference_logps_are_refused_when_written(tmp_path):
    with pytest.raises(ValueError, match="reference log-probs of a pair are not finite"):
        writer(tmp_path).append(**(pairs(2) | dict(chosen_ref_logp=[-1.0, float("nan")])))
    assert len(DPODataset(tmp_path)) == 0


DISK_FULL = """
import sys
from self_rewarding_lm_pytorch.storage.integrity import DiskFullError
from self_rewarding_lm_pytorch.storage.pair_store import PreferenceDataWriter
try:
    PreferenceDataWriter(sys.argv[1], capacity=2000, max_len=256, pad_id=-1, with_ref_logps=True)  # 8.2 MB of arrays
except DiskFullError as error:
    print("DiskFullError:", error)
"""


def test_a_full_disk_is_a_clear_error_not_a_sigbus(tmp_path):
    """On a 2 MB tmpfs (mounted in a user namespace): the writer raises naming the folder and the bytes needed;
    the original's sparse arrays died of SIGBUS at the first page written past the disk's end."""
    import shutil
    import subprocess
    import sys

    if shutil.which("unshare") is None:
        pytest.skip("needs unshare to mount a small tmpfs")
    mount = tmp_path / "small"
    mount.mkdir()
    script = tmp_path / "disk_full.py"
    script.write_text(DISK_FULL)
    command = (f"mount -t tmpfs -o size=2m none {mount} && mkdir {mount}/pairs && "
               f"{sys.executable} {script} {mount}/pairs")
    run = subprocess.run(["unshare", "-rm", "sh", "-c", command], capture_output=True, text=True, timeout=120)
    if "mount" in run.stderr and run.returncode != 0 and "DiskFullError" not in run.stdout:
        pytest.skip(f"cannot mount a small tmpfs here: {run.stderr.strip()[:200]}")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "DiskFullError" in run.stdout and f"{mount}/pairs" in run.stdout and "bytes needed" in run.stdout


def allocated_bytes(folder):
    """What the folder's files really take on disk (blocks), not their apparent size."""
    return sum(path.stat().st_blocks * 512 for path in folder.iterdir() if path.is_file())


def test_a_large_store_with_few_pairs_takes_disk_for_those_pairs_only(tmp_path):
    """The paper plan's store (3,964 pairs) used to reserve all its blocks up front, 81 MB for a run that may make
    none; now the blocks grow with the pairs written (a chunk of GROW_ROWS pairs at a time)."""
    if not hasattr(os, "posix_fallocate") or not hasattr(os.stat(tmp_path), "st_blocks"):
        pytest.skip("needs a filesystem with sparse files and fallocate")
    max_len, capacity = 256, 10_000
    full_size = capacity * (2 * max_len * 8 + 8 + 4 * 4)  # two token rows, prompt_len, four float32 columns
    store = writer(tmp_path, capacity=capacity, max_len=max_len)
    store.append(**pairs(3))
    one_chunk = GROW_ROWS * (2 * max_len * 8 + 8 + 4 * 4)
    used = allocated_bytes(tmp_path)
    assert used < one_chunk + 20 * 8192, (used, full_size)  # a chunk, plus a header page and a last page per file
    assert [DPODataset(tmp_path)[i]["chosen"][2].item() for i in range(3)] == [3, 4, 5]

    resumed = writer(tmp_path, capacity=capacity, max_len=max_len)
    resumed.append(**pairs(GROW_ROWS + 10, offset=3))  # past the first chunk
    assert allocated_bytes(tmp_path) < 2 * one_chunk + 20 * 8192 < full_size // 10


def test_a_store_filled_in_chunks_across_resumes_reads_back_exactly(tmp_path):
    """Growth in chunks, with a new writer (a resumed run) in the middle of one, loses and garbles nothing."""
    capacity = 2 * GROW_ROWS + 5
    written = 0
    for batch in (7, GROW_ROWS, 1, GROW_ROWS):
        store = writer(tmp_path, capacity=capacity)
        written += store.append(**pairs(batch, offset=written))
    assert written == capacity
    data = DPODataset(tmp_path)
    assert len(data) == capacity
    for i in range(capacity):
        item = data[i]
        assert item["chosen"].tolist() == [1, 2, 3 + i, -1, -1, -1]
        assert item["rejected"].tolist() == [1, 2, 40 + i, 5, -1, -1]
    assert [r["pair"] for r in data.records()] == list(range(capacity))
    if hasattr(os, "posix_fallocate"):  # every row's blocks are reserved: nothing of the data sits in a hole
        assert allocated_bytes(tmp_path) >= capacity * (2 * 6 * 8 + 8 + 4 * 4)


FILLED_LATER = """
import sys
from pathlib import Path
import torch
from self_rewarding_lm_pytorch.storage.integrity import DiskFullError
from self_rewarding_lm_pytorch.storage.pair_store import GROW_ROWS, DPODataset, PreferenceDataWriter

folder = Path(sys.argv[1])
settings = dict(capacity=300, max_len=256, pad_id=-1, with_ref_logps=False)  # 1.2 MB of arrays: fits the 2 MB disk
def batch(offset, n=10):
    return dict(chosen=[torch.full((200,), offset + i) for i in range(n)], rejected=[torch.full((100,), -7)] * n,
                prompt_len=[5] * n, chosen_reward=[1.0] * n, rejected_reward=[0.0] * n,
                records=[dict(pair=offset + i) for i in range(n)])

store = PreferenceDataWriter(folder, **settings)
filler = folder.parent / "filler"
filler.write_bytes(b"x" * 1_000_000)  # another program fills the disk after the writer opened
written = 0
try:
    while written < 300:
        written += store.append(**batch(written))
except DiskFullError as error:
    print("DiskFullError:", error)
data = DPODataset(folder)
assert len(data) == written > 0, (len(data), written)
assert all(data[i]["chosen"][0].item() == i and data[i]["chosen"][200].item() == -1 for i in range(written))
print("committed", written)

filler.unlink()  # space freed: the rerun resumes after the committed pairs and fills the store
store = PreferenceDataWriter(folder, **settings)
while store.remaining:
    store.append(**batch(store.num_pairs))
data = DPODataset(folder)
assert [data[i]["chosen"][0].item() for i in range(300)] == list(range(300))
assert [r["pair"] for r in data.records()] == list(range(300))
print("resumed to", len(data))
"""


def test_a_disk_that_fills_while_pairs_are_written_keeps_the_committed_ones(tmp_path):
    """On a 2 MB tmpfs: the store fits when it opens, then another file takes the space. The append that needs new
    blocks raises DiskFullError (the blocks are reserved before rows are written into the sparse file, so no SIGBUS),
    every committed pair reads back exactly, and after space is freed a rerun completes the store."""
    import shutil
    import subprocess
    import sys

    if shutil.which("unshare") is None:
        pytest.skip("needs unshare to mount a small tmpfs")
    mount = tmp_path / "small"
    mount.mkdir()
    script = tmp_path / "filled_later.py"
    script.write_text(FILLED_LATER)
    command = (f"mount -t tmpfs -o size=2m none {mount} && mkdir {mount}/pairs && "
               f"{sys.executable} {script} {mount}/pairs")
    run = subprocess.run(["unshare", "-rm", "sh", "-c", command], capture_output=True, text=True, timeout=120)
    if "mount" in run.stderr and run.returncode != 0 and "DiskFullError" not in run.stdout:
        pytest.skip(f"cannot mount a small tmpfs here: {run.stderr.strip()[:200]}")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "DiskFullError" in run.stdout and f"{mount}/pairs" in run.stdout, run.stdout
    assert "resumed to 300" in run.stdout
    print(run.stdout)
