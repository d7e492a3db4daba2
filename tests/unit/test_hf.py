"""HuggingFace models and tokenizers as the policy: tiny models built from configs, a tokenizer built here."""

import pytest
import torch
from helpers import hf_char_tokenizer, tiny_hf_llama
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from self_rewarding_lm_pytorch import sample
from self_rewarding_lm_pytorch.models.contract import (
    ModelContractError,
    forward_logits,  # noqa: E402
)
from self_rewarding_lm_pytorch.models.hf import HFCausalLM, hf_tokenizer_functions  # noqa: E402

VOCAB = 64


def tiny_gpt2():
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=40, initializer_range=0.2,
                        bos_token_id=1, eos_token_id=2)
    return GPT2LMHeadModel(config).eval()


@pytest.mark.parametrize("make", [tiny_hf_llama, tiny_gpt2], ids=["llama", "gpt2"])
def test_greedy_tokens_equal_hf_generate_on_a_left_padded_batch(make):
    model = make()
    net = HFCausalLM(model)
    generator = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, VOCAB, (n,), generator=generator) for n in (3, 9, 5)]
    ours = sample(net, prompts, max_new_tokens=8, temperature=0.0, eos_id=2)
    assert torch.equal(ours, sample(net, prompts, max_new_tokens=8, temperature=0.0, eos_id=2, cache_kv=False))

    width = max(len(p) for p in prompts)
    ids, mask = torch.zeros(3, width, dtype=torch.long), torch.zeros(3, width, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):], mask[i, width - len(p):] = p, 1
    theirs = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0,
                            eos_token_id=2)[:, width:]
    theirs = theirs.masked_fill(torch.cumsum(theirs == 2, dim=-1) - (theirs == 2).long() > 0, -1)  # pad after EOS
    assert torch.equal(ours, theirs[:, : ours.shape[1]])


def test_the_raw_hf_model_is_refused_with_the_fix_and_the_adapter_meets_the_contract():
    model = tiny_hf_llama()
    ids = torch.randint(0, VOCAB, (2, 5))
    with pytest.raises(ModelContractError, match="HFCausalLM"):
        forward_logits(model, ids)
    assert forward_logits(HFCausalLM(model), ids).shape == (2, 5, VOCAB)


def test_learned_positions_limit_the_length_and_finished_rows_stay_inside():
    net = HFCausalLM(tiny_gpt2())
    with pytest.raises(ValueError, match="max_seq_len 40"):
        sample(net, [torch.tensor([5, 6, 7])], max_new_tokens=40)
    out = sample(net, [torch.tensor([5, 6]), torch.arange(4, 34)], seq_len=40, temperature=0.0)
    assert (out[0] != -1).sum() == 38 and (out[1] != -1).sum() == 10


def test_tokenizer_functions():
    tokenizer = hf_char_tokenizer()
    encode, decode, eos_id = hf_tokenizer_functions(tokenizer)
    ids = encode("sort 3 1:")
    assert ids.dtype == torch.long and decode(ids) == "sort 3 1:" and eos_id == 2
    assert decode(torch.cat([encode(" 1 3"), torch.tensor([eos_id]), encode("junk"), torch.tensor([-1, -1])])) == " 1 3"
