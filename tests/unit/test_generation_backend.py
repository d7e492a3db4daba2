"""The generation backend switch, without vLLM: bad settings are refused when the trainer is built, the library
sampler stays the default, and the library's filters map onto vLLM's sampling settings with their own defaults.
(The vLLM backend itself: tests/integration/test_vllm.py.)"""

import importlib.util
import math

import pytest
import torch

from self_rewarding_lm_pytorch import SelfRewardingTrainer, SFTConfig, SPINTrainer, VLLMConfig, top_p
from self_rewarding_lm_pytorch.generation.backend import LibrarySampler, make_sampler
from self_rewarding_lm_pytorch.generation.sampling import min_p, top_k
from self_rewarding_lm_pytorch.generation.vllm_backend import request_seeds, vllm_sampling_settings
from self_rewarding_lm_pytorch.tasks.sort_digits import CharTokenizer

TOKENIZER = CharTokenizer()
SFT_DATA = [(torch.tensor([5, 6, 7, 8]), 2)] * 4


def trainer(model, **kwargs):
    return SelfRewardingTrainer(model, finetune_configs=[SFTConfig(train_dataset=SFT_DATA)],
                                tokenizer_encode=TOKENIZER.encode, tokenizer_decode=TOKENIZER.decode,
                                accelerate_kwargs=dict(cpu=True), **kwargs)


def test_the_library_sampler_is_the_default(make_transformer, tmp_path):
    assert isinstance(trainer(make_transformer(), checkpoints_folder=tmp_path).sampler, LibrarySampler)


def test_a_model_vllm_cannot_run_is_refused_at_construction_naming_the_field_and_the_fix(make_transformer, tmp_path):
    model = make_transformer()
    with pytest.raises(TypeError, match=r"SelfRewardingTrainer\.generation_backend: the vLLM backend generates with "
                                        r"HuggingFace models only, got a TransformerWrapper.*HFCausalLM.*'library'"):
        trainer(model, checkpoints_folder=tmp_path, generation_backend="vllm")
    with pytest.raises(TypeError, match=r"SPINTrainer\.generation_backend.*HFCausalLM"):
        SPINTrainer(model, train_sft_dataset=SFT_DATA, max_seq_len=16, generation_backend=VLLMConfig(),
                    accelerate_kwargs=dict(cpu=True))


def test_unknown_backends_and_bad_engine_options_are_refused(make_transformer, tmp_path):
    with pytest.raises(ValueError, match=r"generation_backend='vlm' is unknown: use one of \('library', 'vllm'\)"):
        trainer(make_transformer(), checkpoints_folder=tmp_path, generation_backend="vlm")
    with pytest.raises(TypeError, match="generation_backend must be 'library', 'vllm', a VLLMConfig or a sampler, got a dict"):
        make_sampler(dict(gpu_memory_utilization=0.5))
    with pytest.raises(ValueError, match=r"VLLMConfig.gpu_memory_utilization must be in \(0, 1\], got 1.5"):
        VLLMConfig(gpu_memory_utilization=1.5)
    with pytest.raises(ValueError, match=r"VLLMConfig.engine_kwargs sets \['load_format', 'model'\]"):
        VLLMConfig(engine_kwargs=dict(model="x", load_format="auto", swap_space=1))


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_without_vllm_an_hf_model_gets_the_install_command():
    transformers = pytest.importorskip("transformers", reason="needs transformers for an HF model")
    from self_rewarding_lm_pytorch.models.hf import HFCausalLM

    config = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, max_position_embeddings=32)
    with pytest.raises(ImportError, match=r'SelfRewardingTrainer.generation_backend: the vLLM backend needs vllm: pip '
                                          r'install -e "\.\[vllm\]" from the checkout'):
        make_sampler("vllm", HFCausalLM(transformers.LlamaForCausalLM(config)),
                     where="SelfRewardingTrainer.generation_backend")


class Vocab32(torch.nn.Module):
    """Stands in for an HFCausalLM in `vllm_sampling_settings`: the output embedding gives the vocabulary."""

    def __init__(self):
        super().__init__()
        self.model = self
        self.head = torch.nn.Linear(4, 32)

    def get_output_embeddings(self):
        return self.head


def test_the_library_filters_map_onto_vllm_settings_with_their_defaults():
    net = Vocab32()
    assert vllm_sampling_settings(net, 0.7, top_p, None) == dict(temperature=0.7, top_p=0.9)
    assert vllm_sampling_settings(net, 0.7, top_p, dict(thres=0.5)) == dict(temperature=0.7, top_p=0.5)
    assert vllm_sampling_settings(net, 1, min_p, None) == dict(temperature=1.0, min_p=0.1)
    assert vllm_sampling_settings(net, 1, top_k, dict(k=5)) == dict(temperature=1.0, top_k=5)
    # the library's default keeps a tenth of the vocabulary, rounded up
    assert vllm_sampling_settings(net, 1, top_k, None) == dict(temperature=1.0, top_k=math.ceil(0.1 * 32))
    assert vllm_sampling_settings(net, 0, top_p, dict(thres=0.5)) == dict(temperature=0.0)  # greedy: no filter
    with pytest.raises(ValueError, match="filter_fn must be top_p, top_k, min_p or None, got my_filter"):
        def my_filter(logits):
            return logits
        vllm_sampling_settings(net, 1, my_filter, None)
    with pytest.raises(TypeError, match=r"top_p has no settings \['p'\]"):
        vllm_sampling_settings(net, 1, top_p, dict(p=0.5))


def test_request_seeds_follow_the_callers_seed():
    assert request_seeds(None, 2) == [None, None]
    seeds = request_seeds(3, 4)
    assert seeds == request_seeds(3, 4) and len(set(seeds)) == 4 and seeds != request_seeds(4, 4)
    assert request_seeds(torch.Generator().manual_seed(1), 3) == request_seeds(torch.Generator().manual_seed(1), 3)
