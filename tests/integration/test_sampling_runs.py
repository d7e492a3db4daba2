
import pytest
import torch
from helpers import Bigram
from torch import nn

from self_rewarding_lm_pytorch.generation.sampling import sample

POSITION_SCHEMES = {
    "absolute": dict(),
    "rotary": dict(rotary_pos_emb=True),
    "alibi": dict(alibi_pos_bias=True),  # keeps the absolute embedding too
    "alibi_only": dict(alibi_pos_bias=True, disable_abs_pos_emb=True),
    "relative_bias": dict(rel_pos_bias=True),
}


def random_prompts(lengths, num_tokens=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(1, num_tokens, (n,), generator=generator) for n in lengths]


@pytest.mark.parametrize("scheme", POSITION_SCHEMES)
def test_cached_equals_recomputed_and_batch_equals_alone(make_transformer, scheme):
    """About 1-2 s idle each."""
    net = make_transformer(seed=1, max_seq_len=40, depth=2, **POSITION_SCHEMES[scheme])
    prompts = random_prompts((3, 9, 5, 12))

    cached = sample(net, prompts, seq_len=40, temperature=0.0)
    recomputed = sample(net, prompts, seq_len=40, temperature=0.0, cache_kv=False)
    assert torch.equal(cached, recomputed)

    for i, prompt in enumerate(prompts):
        alone = sample(net, [prompt], seq_len=40, temperature=0.0)[0]
        # each row's total length is capped at seq_len: longer prompts get fewer new tokens
        assert len(alone) == 40 - len(prompt)
        assert torch.equal(cached[i, : len(alone)], alone) and (cached[i, len(alone) :] == -1).all()


class RecordsMode(nn.Module):
    def __init__(self, fail: bool = False):
        super().__init__()
        self.net, self.fail, self.modes = Bigram(), fail, []

    def forward(self, ids):
        self.modes.append(self.training)
        if self.fail:
            raise RuntimeError("boom")
        return self.net(ids)


def test_samples_in_eval_mode_and_restores_the_training_flag(make_transformer):
    """Under 1 s idle."""
    net = make_transformer(seed=10).train()
    sample(net, random_prompts((3,)), max_new_tokens=2)
    assert net.training
    net.eval()
    sample(net, random_prompts((3,)), max_new_tokens=2)
    assert not net.training

    spy = RecordsMode().train()
    sample(spy, random_prompts((3,), num_tokens=16), max_new_tokens=3)
    assert spy.modes == [False] * 3 and spy.training  # no dropout while sampling
    failing = RecordsMode(fail=True).train()
    with pytest.raises(RuntimeError, match="boom"):
        sample(failing, random_prompts((3,), num_tokens=16), max_new_tokens=3)
    assert failing.training
