import pytest
import torch

from self_rewarding_lm_pytorch import create_mock_dataset
from self_rewarding_lm_pytorch.data.datasets import SFTCollate, normalize_sft_item, validate_sft_dataset


def test_mock_dataset_calls_output_per_item():
    ds = create_mock_dataset(3, lambda: (torch.arange(4), torch.tensor(1)))
    assert len(ds) == 3
    seq, prompt_len = ds[0]
    assert seq.tolist() == [0, 1, 2, 3] and prompt_len.item() == 1


def test_prompt_mask_and_prompt_len_forms_agree_and_trailing_padding_is_stripped():
    seq = torch.tensor([5, 6, 7, 8, -1, -1])
    by_len = normalize_sft_item((seq, 2), pad_id=-1)
    by_mask = normalize_sft_item((seq, torch.tensor([True, True, False, False, False, False])), pad_id=-1)
    assert by_len.tokens.tolist() == by_mask.tokens.tolist() == [5, 6, 7, 8]
    assert by_len.prompt_len == by_mask.prompt_len == 2
    assert by_len.response.tolist() == [7, 8]


def test_collate_right_pads_and_marks_padding():
    batch = SFTCollate(pad_id=-1)([(torch.tensor([1, 2, 3]), 1), (torch.tensor([4, 5]), 1)])
    assert batch["seq"].tolist() == [[1, 2, 3], [4, 5, -1]]
    assert batch["is_padding"].tolist() == [[False, False, False], [False, False, True]]
    assert batch["prompt_len"].tolist() == [1, 1]


@pytest.mark.parametrize(
    "item, pad_id, message",
    [
        ((torch.tensor([1, 2, 3]), 3), -1, "leaves no response tokens"),
        ((torch.tensor([1, 2, -1, -1]), 2), -1, "leaves no response tokens"),
        ((torch.tensor([1, 0, 3, 4]), 1), 0, "also a real token in use"),
        ((torch.tensor([1, 2, 3]), torch.tensor([False, True, False])), -1, "prefix"),
        ((torch.tensor([[1, 2, 3]]), 1), -1, "1-D"),
        ((torch.tensor([1.5, 2.0]), 1), -1, "non-integer"),
        (torch.tensor([1, 2, 3]), -1, "must be a pair"),
    ],
)
def test_bad_items_get_a_clear_error(item, pad_id, message):
    with pytest.raises(ValueError, match=message):
        normalize_sft_item(item, pad_id=pad_id)


def test_empty_dataset_is_rejected():
    with pytest.raises(ValueError, match="empty"):
        validate_sft_dataset([], pad_id=-1, name="train_dataset")


def test_float_token_tensors_from_a_character_encoder_are_accepted():
    item = normalize_sft_item((torch.Tensor([104.0, 105.0, 33.0]), 1), pad_id=-1)
    assert item.tokens.dtype == torch.long and item.tokens.tolist() == [104, 105, 33]
