import json
import os

import pytest
import torch
from helpers import store_pairs, store_writer

from self_rewarding_lm_pytorch.storage.pair_store import GROW_ROWS, DPODataset


def test_written_pairs_read_back_padded_with_their_values(tmp_path):
    store_writer(tmp_path).append(**store_pairs(2))
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
    store_writer(tmp_path).append(**store_pairs(3))
    resumed = store_writer(tmp_path)
    assert resumed.num_pairs == 3
    assert resumed.append(**store_pairs(4, offset=3)) == 2  # capacity 5
    data = DPODataset(tmp_path)
    assert [data[i]["chosen"][2].item() for i in range(5)] == [3, 4, 5, 6, 7]
    assert [r["pair"] for r in data.records()] == [0, 1, 2, 3, 4]


def test_uncommitted_jsonl_lines_from_a_killed_run_are_dropped_on_resume(tmp_path):
    store_writer(tmp_path).append(**store_pairs(2))
    with open(tmp_path / "pairs.jsonl", "a") as f:  # a run killed after the JSONL write, before the commit
        f.write(json.dumps(dict(pair="uncommitted")) + "\n")
    resumed = store_writer(tmp_path)
    resumed.append(**store_pairs(1, offset=2))
    assert [r["pair"] for r in DPODataset(tmp_path).records()] == [0, 1, 2]


def test_resuming_with_other_settings_is_refused(tmp_path):
    store_writer(tmp_path).append(**store_pairs(1))
    with pytest.raises(ValueError, match="other settings"):
        store_writer(tmp_path, max_len=8)


def test_too_long_sequences_and_missing_reference_logps_are_errors(tmp_path):
    with pytest.raises(ValueError, match="at most 6"):
        store_writer(tmp_path).append(**(store_pairs(1) | dict(chosen=[torch.arange(7)])))
    with pytest.raises(ValueError, match="ref_logp"):
        store_writer(tmp_path / "b").append(**(store_pairs(1) | dict(chosen_ref_logp=None)))


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="meta.json"):
        DPODataset(tmp_path)


def committed(tmp_path, n=3):
    store_writer(tmp_path).append(**store_pairs(n))
    return tmp_path


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
        store_writer(tmp_path)
    monkeypatch.setattr(os, "truncate", real_truncate)
    resumed = store_writer(tmp_path)
    resumed.append(**store_pairs(1, offset=3))
    assert [r["pair"] for r in DPODataset(tmp_path).records()] == [0, 1, 2, 3]


def test_non_finite_reference_logps_are_refused_when_written(tmp_path):
    with pytest.raises(ValueError, match="reference log-probs of a pair are not finite"):
        store_writer(tmp_path).append(**(store_pairs(2) | dict(chosen_ref_logp=[-1.0, float("nan")])))
    assert len(DPODataset(tmp_path)) == 0


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
    store = store_writer(tmp_path, capacity=capacity, max_len=max_len)
    store.append(**store_pairs(3))
    one_chunk = GROW_ROWS * (2 * max_len * 8 + 8 + 4 * 4)
    used = allocated_bytes(tmp_path)
    assert used < one_chunk + 20 * 8192, (used, full_size)  # a chunk, plus a header page and a last page per file
    assert [DPODataset(tmp_path)[i]["chosen"][2].item() for i in range(3)] == [3, 4, 5]

    resumed = store_writer(tmp_path, capacity=capacity, max_len=max_len)
    resumed.append(**store_pairs(GROW_ROWS + 10, offset=3))  # past the first chunk
    assert allocated_bytes(tmp_path) < 2 * one_chunk + 20 * 8192 < full_size // 10


def test_a_store_filled_in_chunks_across_resumes_reads_back_exactly(tmp_path):
    """Growth in chunks, with a new writer (a resumed run) in the middle of one, loses and garbles nothing."""
    capacity = 2 * GROW_ROWS + 5
    written = 0
    for batch in (7, GROW_ROWS, 1, GROW_ROWS):
        store = store_writer(tmp_path, capacity=capacity)
        written += store.append(**store_pairs(batch, offset=written))
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
