"""A prefix shared by every row is computed once (`sample(..., shared_prefix=...)`, the judge's template prefix), and
changes nothing in what is sampled."""

import warnings

import pytest
import torch
from helpers import judge_setup
from x_transformers import Decoder, TransformerWrapper

from self_rewarding_lm_pytorch import RewardConfig, sample
from self_rewarding_lm_pytorch.judging.judges import SelfJudge
from self_rewarding_lm_pytorch.tasks.sort_digits import CharTokenizer


def x_transformers(**attn_kwargs):
    torch.manual_seed(0)
    return TransformerWrapper(num_tokens=64, max_seq_len=128, attn_layers=Decoder(dim=32, depth=2, heads=2, **attn_kwargs)).eval()


def record_forward_widths(model) -> list[tuple[int, int]]:
    shapes = []
    model.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape)))
    return shapes


def test_a_decoder_that_cannot_share_gets_the_whole_rows():
    model = x_transformers(rotary_pos_emb=True)
    prefix, prompts = torch.tensor([7, 8, 9]), [torch.tensor([1, 2]), torch.tensor([3])]
    shapes = record_forward_widths(model)
    shared = sample(model, prompts, max_new_tokens=4, temperature=0.0, shared_prefix=prefix, cache_kv=False)
    assert shapes[0] == (2, 5)  # recompute: no cache to share, the rows are run whole
    assert torch.equal(shared, sample(model, [torch.cat([prefix, p]) for p in prompts], max_new_tokens=4, temperature=0.0))


def test_a_tokenizer_that_breaks_the_prefix_falls_back_once_with_a_warning():
    tokenizer = CharTokenizer()

    def encode_with_end_token(text):  # like a tokenizer that appends an end token: encode(prefix) begins nothing
        return torch.cat([tokenizer.encode(text), torch.tensor([1])])

    model, candidates, kwargs = judge_setup()
    kwargs["tokenizer_encode"] = encode_with_end_token
    config = RewardConfig("Rate it.\n{{ prompt }}|{{ response }}|")
    judge = SelfJudge(model, config, **kwargs)
    with pytest.warns(UserWarning, match="run whole"):
        shared = judge(candidates)
    shapes = record_forward_widths(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = judge(candidates)  # said once
    assert shapes[0][0] == 2  # the whole rows of the first call, no one-row prefix
    assert shared.raw_outputs == again.raw_outputs == SelfJudge(model, config, share_prefix=False, **kwargs)(candidates).raw_outputs
