import math

import pytest
import torch
from helpers import Bigram
from torch import nn

from self_rewarding_lm_pytorch.generation.sampling import min_p, sample, top_k, top_p
from self_rewarding_lm_pytorch.models.decoders import make_decoder


def random_prompts(lengths, num_tokens=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(1, num_tokens, (n,), generator=generator) for n in lengths]


def test_greedy_matches_a_hand_rolled_argmax_loop(make_transformer):
    """The next token comes from the logits at the last position (the original read the wrong one)."""
    net = make_transformer(seed=2).eval()
    prompt = random_prompts((6,))[0]
    seq = prompt.clone()
    for _ in range(5):
        seq = torch.cat([seq, net(seq[None])[0, -1].argmax()[None]])
    assert torch.equal(sample(net, [prompt], max_new_tokens=5, temperature=0.0)[0], seq[6:])


def test_any_module_works_through_recompute_and_padding_does_not_leak():
    net = Bigram()
    prompts = random_prompts((2, 7), num_tokens=16)
    assert type(make_decoder(net)).__name__ == "RecomputeDecoder"
    batch = sample(net, prompts, max_new_tokens=6, temperature=0.0)
    for i, prompt in enumerate(prompts):
        token, expected = prompt[-1], []
        for _ in range(6):
            token = net.logits.weight[token].argmax()
            expected.append(int(token))
        assert batch[i].tolist() == expected


class Scripted(nn.Module):
    """Emits `script[row][t]` at generation step t, whatever the input: for EOS and padding tests."""

    def __init__(self, script, num_tokens=8):
        super().__init__()
        self.script, self.num_tokens = script, num_tokens
        self.dummy = nn.Parameter(torch.zeros(()))
        self.prompt_len = None

    def forward(self, ids):
        step = ids.shape[1] - self.prompt_len
        logits = torch.zeros(*ids.shape, self.num_tokens)
        for row, script in enumerate(self.script):
            token = script[min(step, len(script) - 1)]
            logits[row, :, token] = 10.0
        return logits


def test_each_row_stops_at_its_own_eos_and_is_padded_after():
    eos = 7
    net = Scripted([[1, 2, eos, 3, 3, 3], [4, eos, 5, 5, 5, 5], [1, 1, 1, 1, 1, 1]])
    net.prompt_len = 2
    out = sample(net, torch.ones(3, 2, dtype=torch.long), max_new_tokens=6, temperature=0.0, eos_id=eos)
    assert out.tolist() == [[1, 2, eos, -1, -1, -1], [4, eos, -1, -1, -1, -1], [1, 1, 1, 1, 1, 1]]

    # every row done early: the loop ends there
    net.script = net.script[:2]
    out = sample(net, torch.ones(2, 2, dtype=torch.long), max_new_tokens=6, temperature=0.0, eos_id=eos)
    assert out.tolist() == [[1, 2, eos], [4, eos, -1]]


def test_output_keep_prompt(make_transformer):
    net = make_transformer(seed=4)
    prompts = random_prompts((2, 5))
    responses = sample(net, prompts, max_new_tokens=4, temperature=0.0)
    with_prompt = sample(net, prompts, max_new_tokens=4, temperature=0.0, output_keep_prompt=True)
    for i, prompt in enumerate(prompts):
        assert torch.equal(with_prompt[i, : len(prompt) + 4], torch.cat([prompt, responses[i]]))


def lookup_model(next_token: dict[int, int], num_tokens: int = 8) -> nn.Module:
    """A bigram model whose greedy next token after `t` is `next_token[t]`."""
    net = nn.Embedding(num_tokens, num_tokens)
    nn.init.zeros_(net.weight)
    for token, following in next_token.items():
        net.weight.data[token, following] = 10.0
    return net


def test_output_keep_prompt_with_mixed_lengths_eos_and_samples():
    eos = 7
    net = lookup_model({5: eos, 6: 3, 3: 3})
    out = sample(net, [torch.tensor([5, 5, 5]), torch.tensor([6])], max_new_tokens=3, temperature=0.0, eos_id=eos,
                 output_keep_prompt=True, num_samples=2)
    assert out.tolist() == [[5, 5, 5, eos], [5, 5, 5, eos], [6, 3, 3, 3], [6, 3, 3, 3]]


def test_right_padded_2d_prompts_and_float_token_ids(make_transformer):
    net = make_transformer(seed=5)
    prompts = random_prompts((3, 5))
    padded = torch.full((2, 5), -1)
    padded[0, :3], padded[1] = prompts[0], prompts[1]
    expected = sample(net, prompts, max_new_tokens=4, temperature=0.0)
    assert torch.equal(sample(net, padded, max_new_tokens=4, temperature=0.0), expected)
    assert torch.equal(sample(net, [p.float() for p in prompts], max_new_tokens=4, temperature=0.0), expected)


def test_generator_makes_sampling_reproducible(make_transformer):
    net = make_transformer(seed=6)
    prompts = random_prompts((4, 6))
    a = sample(net, prompts, max_new_tokens=12, generator=123)
    b = sample(net, prompts, max_new_tokens=12, generator=torch.Generator().manual_seed(123))
    c = sample(net, prompts, max_new_tokens=12, generator=124)
    assert torch.equal(a, b) and not torch.equal(a, c)


class CountingDecoder:
    def __init__(self, decoder):
        self.decoder, self.prefill_rows, self.repeats = decoder, [], []

    def prefill(self, ids, seq_start_pos):
        self.prefill_rows.append(len(ids))
        return self.decoder.prefill(ids, seq_start_pos)

    def step(self, new_ids):
        return self.decoder.step(new_ids)

    def repeat(self, n):
        self.repeats.append(n)
        self.decoder.repeat(n)


def test_num_samples_prefills_each_prompt_once_and_is_prompt_major(make_transformer, monkeypatch):
    import self_rewarding_lm_pytorch.generation.sampling as sampling

    net = make_transformer(seed=7)
    prompts = random_prompts((3, 6))
    spies = []

    def spying_make_decoder(net, cache_kv=True):
        spies.append(CountingDecoder(make_decoder(net, cache_kv)))
        return spies[-1]

    monkeypatch.setattr(sampling, "make_decoder", spying_make_decoder)
    greedy = sample(net, prompts, max_new_tokens=5, temperature=0.0, num_samples=3)
    assert spies[-1].prefill_rows == [2] and spies[-1].repeats == [3]
    single = sample(net, prompts, max_new_tokens=5, temperature=0.0)
    assert torch.equal(greedy, single.repeat_interleave(3, dim=0))

    sampled = sample(net, prompts, max_new_tokens=8, num_samples=4, generator=0)
    assert sampled.shape == (8, 8) and len({tuple(r.tolist()) for r in sampled}) > 2


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    kept = lambda thres: (top_p(logits, thres) > -math.inf)[0].tolist()
    assert kept(0.5) == [True, False, False, False]  # 0.5 alone reaches 0.5
    assert kept(0.6) == [True, True, False, False]
    assert kept(0.9) == [True, True, True, False]  # 0.5 + 0.3 + 0.15 = 0.95 >= 0.9
    assert kept(0.01) == [True, False, False, False]  # the most likely token always stays
    shuffled = logits[:, [2, 0, 3, 1]]
    assert (top_p(shuffled, 0.6) > -math.inf)[0].tolist() == [False, True, False, True]


def test_top_k_and_min_p():
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0, 0.0]])
    assert (top_k(logits, k=2) > -math.inf)[0].tolist() == [False, True, True, False, False]
    assert (top_k(logits, frac_num_tokens=0.6) > -math.inf).sum() == 3
    ties = torch.tensor([[2.0, 1.0, 1.0, 1.0, 0.0]])
    assert (top_k(ties, k=2) > -math.inf).sum() == 2  # exactly k, even when the k-th value is tied
    probs = torch.tensor([[0.6, 0.3, 0.07, 0.03]])  # threshold 0.1 * 0.6 = 0.06
    assert (min_p(probs.log(), 0.1) > -math.inf)[0].tolist() == [True, True, True, False]


def test_length_errors_name_the_lengths(make_transformer):
    net = make_transformer(seed=8, max_seq_len=16)
    with pytest.raises(ValueError, match="8 tokens: no room .* seq_len=8"):
        sample(net, random_prompts((8,)), seq_len=8)
    with pytest.raises(ValueError, match="exceeds the model's max_seq_len 16"):
        sample(net, random_prompts((8,)), max_new_tokens=10)
    with pytest.raises(ValueError, match="needs seq_len .* or max_new_tokens"):
        sample(net, random_prompts((8,)))
    with pytest.raises(ValueError, match="no prompts"):
        sample(net, [], max_new_tokens=2)
    with pytest.raises(ValueError, match="prompt 1 is empty .length 0."):
        sample(net, [torch.tensor([1]), torch.tensor([], dtype=torch.long)], max_new_tokens=2)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1, got 0"):
        sample(net, random_prompts((3,)), max_new_tokens=0)
    # the cap is per row: a long prompt with a short budget fits although the padded batch would not
    assert sample(net, random_prompts((14, 2)), seq_len=16, temperature=0.0).shape == (2, 14)


def test_absolute_positions_with_mixed_prompt_lengths_up_to_max_seq_len(make_transformer):
    """Rows finish at different times; finished rows must not push positions past the embedding table."""
    net = make_transformer(seed=9, max_seq_len=20)
    prompts = random_prompts((2, 15))
    pad = 1000  # outside the vocabulary: finished rows must never feed it back to the model
    cached, recomputed = (sample(net, prompts, seq_len=20, temperature=0.0, pad_id=pad, cache_kv=c) for c in (True, False))
    assert torch.equal(cached, recomputed)
    assert (cached[0] != pad).sum() == 18 and (cached[1] != pad).sum() == 5
    for i, prompt in enumerate(prompts):
        alone = sample(net, [prompt], seq_len=20, temperature=0.0)[0]
        assert torch.equal(cached[i, : len(alone)], alone)


def test_seeded_sampling_is_the_same_with_and_without_the_cache(make_transformer):
    net = make_transformer(seed=11, depth=2, rotary_pos_emb=True)
    prompts = random_prompts((3, 9, 5))
    kwargs = dict(seq_len=30, filter_fn=top_p, filter_kwargs=dict(thres=0.95), generator=5)
    assert torch.equal(sample(net, prompts, **kwargs), sample(net, prompts, cache_kv=False, **kwargs))


def test_models_without_a_usable_cache_fall_back_to_recompute():
    from x_transformers import Decoder, TransformerWrapper

    torch.manual_seed(12)
    # memory tokens switch x-transformers' cache off (`can_cache_kv` is False)
    net = TransformerWrapper(num_tokens=32, max_seq_len=64, num_memory_tokens=2, attn_layers=Decoder(dim=32, depth=1, heads=2))
    assert type(make_decoder(net)).__name__ == "RecomputeDecoder"
    prompts = random_prompts((3, 8))
    batch = sample(net, prompts, seq_len=20, temperature=0.0)
    for i, prompt in enumerate(prompts):
        alone = sample(net, [prompt], seq_len=20, temperature=0.0)[0]
        assert torch.equal(batch[i, : len(alone)], alone)


def test_a_ddp_wrapped_model_keeps_its_kv_cache(make_transformer, tmp_path):
    import torch.distributed as dist

    net = make_transformer(seed=13)
    prompts = random_prompts((3, 8))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(net)
        assert type(make_decoder(ddp)).__name__ == "XTransformersKVDecoder"
        assert torch.equal(sample(ddp, prompts, seq_len=20, temperature=0.0), sample(net, prompts, seq_len=20, temperature=0.0))
    finally:
        dist.destroy_process_group()


class _FixedLogits(nn.Module):
    """Every position predicts the same hand-built distribution."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = nn.Parameter(logits, requires_grad=False)

    def forward(self, ids):
        return self.logits.expand(*ids.shape, -1)


def test_temperature_is_applied_before_top_p_as_in_transformers():
    # at T = 1 the 0.9-nucleus of this distribution holds 6 tokens; sharpened by T = 0.7 it holds 5
    logits = torch.tensor([0.30, 0.22, 0.16, 0.12, 0.08, 0.05, 0.04, 0.03]).log()
    model = _FixedLogits(logits)
    tokens = sample(model, [torch.tensor([0])], temperature=0.7, filter_fn=top_p, filter_kwargs=dict(thres=0.9),
                    max_new_tokens=1, num_samples=4000, generator=0, cache_kv=False)
    seen = set(tokens[:, 0].tolist())

    pytest.importorskip("transformers")
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    warped = TopPLogitsWarper(0.9)(None, TemperatureLogitsWarper(0.7)(None, logits[None].clone()))
    expected = set((warped[0] > -math.inf).nonzero()[:, 0].tolist())
    assert expected == {0, 1, 2, 3, 4}
    assert seen == expected
    # and the kept tokens' probabilities are transformers' (4000 draws: within 0.03)
    frequency = torch.bincount(tokens[:, 0], minlength=8).float() / len(tokens)
    assert torch.allclose(frequency, warped[0].softmax(-1), atol=0.03)
