"""A prefix shared by every row is computed once (`sample(..., shared_prefix=...)`, the judge's template prefix), and
changes nothing in what is sampled."""

import pytest
import torch
from helpers import judge_setup
from x_transformers import Decoder, TransformerWrapper

from self_rewarding_lm_pytorch import RewardConfig, sample
from self_rewarding_lm_pytorch.judging.judges import SelfJudge, longest_common_prefix


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


def test_the_shared_prefix_is_the_longest_common_token_prefix_leaving_a_token_in_every_row():
    rows = [torch.tensor(r) for r in ([1, 2, 3, 4], [1, 2, 3], [1, 2, 5, 6])]
    assert longest_common_prefix(rows).tolist() == [1, 2]
    same = [torch.tensor([4, 5, 6]), torch.tensor([4, 5, 6])]
    assert longest_common_prefix(same).tolist() == [4, 5]  # the last token stays in the rows
    assert longest_common_prefix([torch.tensor([4]), torch.tensor([4, 5])]).tolist() == []


@pytest.mark.parametrize("settings", [{"temperature": 0.0}, {"temperature": 1.0, "top_p": 0.9}], ids=["greedy", "sampled"])
def test_judge_prompts_through_a_chat_template_share_their_common_tokens(settings):
    """The template's text encoded alone is a whole chat turn (user header, text, end of turn, assistant header), so it
    begins no judge prompt; the common start of the encoded prompts (system / user header, the template's text) is
    shared, and the judgements are token for token those of the prompts run whole."""
    pytest.importorskip("transformers")
    from tiny_chat import chat_tokenizer, tiny_llama

    from self_rewarding_lm_pytorch.models.hf import HFCausalLM, hf_tokenizer_functions

    tokenizer = chat_tokenizer()
    encode, decode, eos_id = hf_tokenizer_functions(tokenizer, chat_template=True, system_prompt="You judge answers.")
    model = HFCausalLM(tiny_llama())
    config = RewardConfig("Rate the answer from 0 to 5, then write Score: N.\n{{ prompt }}|{{ response }}|")
    _, candidates, _ = judge_setup()
    kwargs = dict(tokenizer_encode=encode, tokenizer_decode=decode, eos_id=eos_id, num_judgements=2, max_new_tokens=6,
                  batch_size=2, **settings)
    rendered = [encode(config.render(p, r)).tolist() for p, r in zip(candidates.prompts, candidates.responses)]
    common = next(i for i in range(len(rendered[0])) if len({tuple(r[: i + 1]) for r in rendered}) > 1)
    assert common > len("Rate the answer from 0 to 5, then write Score: N.\n")  # the system turn and header too
    unshared = SelfJudge(model, config, share_prefix=False, **kwargs)(candidates, seed=3)
    shapes = record_forward_widths(model)
    shared = SelfJudge(model, config, **kwargs)(candidates, seed=3)
    assert shapes[0] == (1, common)  # each sampler call starts with the common prefix, alone
    assert [s for s in shapes if s[0] == 1 and s[1] == common] == [(1, common)] * 2  # once per call (2 calls)
    assert shared.raw_outputs == unshared.raw_outputs
    assert all(torch.equal(a, b) for x, y in zip(shared.output_ids, unshared.output_ids) for a, b in zip(x, y))
    assert torch.equal(shared.scores.isnan(), unshared.scores.isnan())


def test_prompts_with_little_in_common_are_run_whole():
    model, candidates, kwargs = judge_setup()
    config = RewardConfig("{{ prompt }}|{{ response }}| rate it:")  # the prompts differ from their first tokens on
    shapes = record_forward_widths(model)
    shared = SelfJudge(model, config, **kwargs)(candidates)
    assert shapes[0][0] == 2  # the whole rows of the first call, no one-row prefix
    assert shared.raw_outputs == SelfJudge(model, config, share_prefix=False, **kwargs)(candidates).raw_outputs
