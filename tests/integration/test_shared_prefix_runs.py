"""A prefix shared by every row is computed once (`sample(..., shared_prefix=...)`, the judge's template prefix), and
changes nothing in what is sampled."""


import pytest
import torch
from helpers import judge_setup
from x_transformers import Decoder, TransformerWrapper

from self_rewarding_lm_pytorch import RewardConfig, sample
from self_rewarding_lm_pytorch.judging.judges import SelfJudge


def x_transformers(**attn_kwargs):
    torch.manual_seed(0)
    return TransformerWrapper(num_tokens=64, max_seq_len=128, attn_layers=Decoder(dim=32, depth=2, heads=2, **attn_kwargs)).eval()


def hf(kind: str):
    transformers = pytest.importorskip("transformers")
    from self_rewarding_lm_pytorch.models.hf import HFCausalLM

    torch.manual_seed(0)
    if kind == "llama":
        config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                          initializer_range=0.2)
        return HFCausalLM(transformers.LlamaForCausalLM(config).eval())
    config = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=128, initializer_range=0.2,
                                     bos_token_id=1, eos_token_id=2)
    return HFCausalLM(transformers.GPT2LMHeadModel(config).eval())


MODELS = {
    "x-transformers absolute": lambda: x_transformers(),
    "x-transformers rotary": lambda: x_transformers(rotary_pos_emb=True),
    "x-transformers alibi": lambda: x_transformers(alibi_pos_bias=True),
    "hf llama (rotary)": lambda: hf("llama"),
    "hf gpt2 (absolute)": lambda: hf("gpt2"),
}


def record_forward_widths(model) -> list[tuple[int, int]]:
    shapes = []
    model.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape)))
    return shapes


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("settings", [dict(temperature=0.0), dict(temperature=1.0, generator=3, num_samples=2)],
                         ids=["greedy", "sampled"])
def test_a_shared_prefix_is_computed_once_and_samples_the_same_tokens(name, settings):
    """About 1-2 s idle each."""
    model = MODELS[name]()
    torch.manual_seed(1)
    prefix = torch.randint(1, 64, (6,))
    # left padding of up to 11 slots, more than the prefix's 6 tokens: some rows' prefix starts past the shared slots
    prompts = [torch.randint(1, 64, (n,)) for n in (3, 12, 1, 7)]
    whole = sample(model, [torch.cat([prefix, p]) for p in prompts], max_new_tokens=8, eos_id=5, **settings)
    shapes = record_forward_widths(model)
    shared = sample(model, prompts, max_new_tokens=8, eos_id=5, shared_prefix=prefix, **settings)
    assert torch.equal(shared, whole)
    # the prefix ran once, for one row; then only the slots after it, for every row
    assert shapes[:2] == [(1, 6), (4, 12)]
    kept = sample(model, prompts, max_new_tokens=8, eos_id=5, shared_prefix=prefix, output_keep_prompt=True, **settings)
    assert torch.equal(kept, sample(model, [torch.cat([prefix, p]) for p in prompts], max_new_tokens=8, eos_id=5,
                                    output_keep_prompt=True, **settings))


def test_greedy_judgements_with_the_paper_prompt_are_the_same_with_and_without_sharing():
    """Under 1 s idle."""
    model, candidates, kwargs = judge_setup()
    config = RewardConfig()  # the paper's judge prompt
    unshared = SelfJudge(model, config, share_prefix=False, **kwargs)(candidates)
    shapes = record_forward_widths(model)
    shared = SelfJudge(model, config, **kwargs)(candidates)
    assert shared.raw_outputs == unshared.raw_outputs
    assert torch.equal(shared.scores.isnan(), unshared.scores.isnan())
    # each sampler call starts with the prompts' common prefix, alone: the template's text before {{ prompt }} and
    # the "sort " that every candidate's prompt begins with (a character tokenizer: one token per character)
    prefix_len = len(config.prompt_template.split("{{ prompt }}")[0]) + len("sort ")
    assert shapes[0] == (1, prefix_len)
    assert prefix_len > 1000
