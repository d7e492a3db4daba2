import json

import pytest
import torch

from self_rewarding_lm_pytorch.preference_data import DPODataset, PreferenceDataWriter


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
