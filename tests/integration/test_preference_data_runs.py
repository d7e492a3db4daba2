
import pytest
from helpers import run_watched, store_pairs, store_writer

from self_rewarding_lm_pytorch.storage.integrity import CorruptFileError
from self_rewarding_lm_pytorch.storage.pair_store import DPODataset


def committed(tmp_path, n=3):
    store_writer(tmp_path).append(**store_pairs(n))
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
    """Under 1 s idle."""
    damage(committed(tmp_path))
    with pytest.raises(CorruptFileError, match=named.replace(".", r"\.")):
        store_writer(tmp_path)
    with pytest.raises(CorruptFileError, match=named.replace(".", r"\.")):
        DPODataset(tmp_path)


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
    the original's sparse arrays died of SIGBUS at the first page written past the disk's end. About 3 s idle."""
    import shutil
    import sys

    if shutil.which("unshare") is None:
        pytest.skip("needs unshare to mount a small tmpfs")
    mount = tmp_path / "small"
    mount.mkdir()
    script = tmp_path / "disk_full.py"
    script.write_text(DISK_FULL)
    command = (f"mount -t tmpfs -o size=2m none {mount} && mkdir {mount}/pairs && "
               f"{sys.executable} {script} {mount}/pairs")
    run = run_watched(["unshare", "-rm", "sh", "-c", command])
    if "mount" in run.stderr and run.returncode != 0 and "DiskFullError" not in run.stdout:
        pytest.skip(f"cannot mount a small tmpfs here: {run.stderr.strip()[:200]}")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "DiskFullError" in run.stdout and f"{mount}/pairs" in run.stdout and "bytes needed" in run.stdout


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
    every committed pair reads back exactly, and after space is freed a rerun completes the store. About 3 s idle."""
    import shutil
    import sys

    if shutil.which("unshare") is None:
        pytest.skip("needs unshare to mount a small tmpfs")
    mount = tmp_path / "small"
    mount.mkdir()
    script = tmp_path / "filled_later.py"
    script.write_text(FILLED_LATER)
    command = (f"mount -t tmpfs -o size=2m none {mount} && mkdir {mount}/pairs && "
               f"{sys.executable} {script} {mount}/pairs")
    run = run_watched(["unshare", "-rm", "sh", "-c", command])
    if "mount" in run.stderr and run.returncode != 0 and "DiskFullError" not in run.stdout:
        pytest.skip(f"cannot mount a small tmpfs here: {run.stderr.strip()[:200]}")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "DiskFullError" in run.stdout and f"{mount}/pairs" in run.stdout, run.stdout
    assert "resumed to 300" in run.stdout
    print(run.stdout)
