"""A pairs folder takes disk as pairs arrive, not for the whole capacity up front."""

import torch

from self_rewarding_lm_pytorch.preference_data import DPODataset, PreferenceDataWriter


def pairs(start, n):
    return dict(
        chosen=[torch.tensor([1, 2, i % 100]) for i in range(start, start + n)],
        rejected=[torch.tensor([1, 2, 7, i % 100]) for i in range(start, start + n)],
        prompt_len=[2] * n, chosen_reward=[float(i) for i in range(start, start + n)], rejected_reward=[0.0] * n,
        records=[dict(pair=i) for i in range(start, start + n)],
        chosen_ref_logp=[-1.0] * n, rejected_ref_logp=[-2.0] * n,
    )


def test_the_paper_plans_pair_folder_starts_small_and_grows_keeping_every_pair(tmp_path):
    # the paper's first iteration: 3,964 pairs of up to 2,560 tokens would be 81 MB per token array up front
    writer = PreferenceDataWriter(tmp_path, capacity=3964, max_len=2560, pad_id=-1, with_ref_logps=True)
    assert (tmp_path / "chosen.npy").stat().st_size < 2 * 64 * 2560 * 8
    assert len(DPODataset(tmp_path)) == 0

    written = 0
    for n in (50, 30, 70):  # crosses 64 and 128 rows
        writer.append(**pairs(written, n))
        written += n
    assert writer.arrays["chosen"].shape[0] == 256 and (tmp_path / "chosen.npy").stat().st_size < 3964 * 2560 * 8 / 10

    # a resumed writer (another process, after a crash) keeps growing from what is on disk
    resumed = PreferenceDataWriter(tmp_path, capacity=3964, max_len=2560, pad_id=-1, with_ref_logps=True)
    resumed.append(**pairs(written, 200))
    written += 200
    data = DPODataset(tmp_path)
    assert len(data) == written == 350
    assert [int(data[i]["chosen"][2]) for i in (0, 63, 64, 149, 349)] == [0, 63, 64, 49, 49]
    assert [float(data[i]["chosen_reward"]) for i in (0, 100, 349)] == [0.0, 100.0, 349.0]
    assert [r["pair"] for r in data.records()] == list(range(350))


def test_growth_stops_at_capacity(tmp_path):
    writer = PreferenceDataWriter(tmp_path, capacity=100, max_len=8, pad_id=-1, with_ref_logps=True)
    assert writer.append(**pairs(0, 150)) == 100
    assert writer.arrays["chosen"].shape[0] == 100 and len(DPODataset(tmp_path)) == 100
