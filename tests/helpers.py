"""Helpers shared by several test files, unit and integration: tiny pair generation, sorted-digit DPO pairs, the small
settings and byte-level tokenizer of the orchestrator's tests, the pair store's columns, a two-stage plan, a judge
set-up, a bigram model, tiny HuggingFace models (their imports are inside: only their tests need the extras), and
`run_watched`, the way every test runs a subprocess."""

import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from conftest import tiny_transformer
from torch import Tensor, nn
from x_transformers import Decoder, TransformerWrapper

from self_rewarding_lm_pytorch import ExternalRewardDPOConfig, SelfRewardingTrainer, SFTConfig, create_mock_dataset
from self_rewarding_lm_pytorch.judging.judges import Candidates
from self_rewarding_lm_pytorch.pairs.config import PairGenerationConfig
from self_rewarding_lm_pytorch.pairs.loop import generate_preference_pairs
from self_rewarding_lm_pytorch.storage.pair_store import PreferenceDataWriter
from self_rewarding_lm_pytorch.tasks.sort_digits import CharTokenizer, SortDigitsTask, make_prompt, solve

TOKENIZER = CharTokenizer()


def generate(model, prompts, judge, folder, **config_kwargs):
    """Pairs of `model`'s answers to `prompts` judged by `judge`, in `folder`, with small settings."""
    config = PairGenerationConfig(**{**dict(num_preference_pairs=4, prompt_batch_size=4, response_max_new_tokens=6,
                                             temperature=1.0, top_p=None), **config_kwargs})
    return generate_preference_pairs(
        model, prompts, judge, config, folder=folder, tokenizer_encode=TOKENIZER.encode,
        tokenizer_decode=TOKENIZER.decode, accelerator=Accelerator(cpu=True), pad_id=-1, eos_id=TOKENIZER.eos_id,
    )


def sort_pairs(n, seed, length=3, tokenizer=TOKENIZER):
    """chosen: the digits sorted; rejected: sorted the wrong way round (a repeated digit set gives a tie, kept)."""
    rng, eos = random.Random(seed), torch.tensor([tokenizer.eos_id])
    pairs = []
    for _ in range(n):
        digits = [rng.randint(1, 9) for _ in range(length)]
        prompt = tokenizer.encode(make_prompt(digits))
        wrong = " " + " ".join(map(str, sorted(digits, reverse=True)))
        pairs.append(dict(
            chosen=torch.cat([prompt, tokenizer.encode(solve(digits)), eos]),
            rejected=torch.cat([prompt, tokenizer.encode(wrong), eos]),
            prompt_len=torch.tensor(len(prompt)),
        ))
    return pairs


def decode_tokens(tokens: Tensor) -> str:
    decode_token = lambda token: str(chr(max(32, token)))
    return "".join(list(map(decode_token, tokens)))


def encode_str(seq_str: str) -> Tensor:
    return Tensor(list(map(ord, seq_str)))


def mock_sft_dataset(length=16, seq_len=24):
    return create_mock_dataset(length, lambda: (torch.randint(0, 256, (seq_len,)), torch.tensor(1)))


def small_dpo(**overrides):
    return dict(dict(batch_size=4, num_train_steps=2, learning_rate=1e-4, end_learning_rate=1e-5), **overrides)


def small_pairs(**overrides):
    return dict(dict(num_preference_pairs=4, prompt_batch_size=4, response_max_new_tokens=6), **overrides)


def checksum(prompt: str, response: str) -> float:
    """An external reward that tells an untrained model's random answers apart (the checker scores them all 0)."""
    return float(sum(map(ord, response)) % 7)


def store_pairs(n, offset=0):
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


def store_writer(folder, **overrides):
    settings = dict(capacity=5, max_len=6, pad_id=-1, with_ref_logps=True) | overrides
    return PreferenceDataWriter(folder, **settings)


def plan_trainer(folder, reward_fn, encode=TOKENIZER.encode, evaluate=None, seed=0):
    task = SortDigitsTask(length=3, seed=3)
    torch.manual_seed(seed)
    model = tiny_transformer(num_tokens=TOKENIZER.num_tokens, max_seq_len=48)
    stages = [
        SFTConfig(train_dataset=task.instruction_examples(8), batch_size=8, learning_rate=1e-3, end_learning_rate=1e-4),
        ExternalRewardDPOConfig(prompt_dataset=task.prompts(16), reward_fn=reward_fn, temperature=1.0, num_preference_pairs=2,
                                prompt_batch_size=4, response_max_new_tokens=6, batch_size=2, num_train_steps=1),
    ]
    return SelfRewardingTrainer(model, finetune_configs=stages, tokenizer_encode=encode, tokenizer_decode=TOKENIZER.decode,
                                eos_id=TOKENIZER.eos_id, accelerate_kwargs=dict(cpu=True), checkpoints_folder=folder,
                                evaluate=evaluate)


def count_digits(prompt, response):
    return float(sum(c.isdigit() for c in response))


def judge_setup(**judge_kwargs):
    tokenizer = CharTokenizer()
    torch.manual_seed(0)
    model = TransformerWrapper(num_tokens=128, max_seq_len=4096,
                               attn_layers=Decoder(dim=32, depth=1, heads=2, rotary_pos_emb=True)).eval()
    candidates = Candidates(prompts=["sort 3 1:", "sort 9 8 7 1:", "sort 2:"], prompt_ids=[], response_ids=[],
                            responses=[" 1 3", " 1", " 2 2 2 2 2"])
    judge_kwargs = dict(tokenizer_encode=tokenizer.encode, tokenizer_decode=tokenizer.decode, num_judgements=2,
                        max_new_tokens=6, temperature=0.0, eos_id=0, batch_size=2, **judge_kwargs)
    return model, candidates, judge_kwargs


def with_lora(base, seed=1):
    """LoRA on every attention projection, initialised non-zero so that the adapters change the outputs."""
    import peft

    from self_rewarding_lm_pytorch.models.hf import HFCausalLM

    torch.manual_seed(seed)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0,
                             init_lora_weights=False)
    return HFCausalLM(peft.get_peft_model(base, config))


class Bigram(nn.Module):
    """Not an x-transformers model: goes through the full-recompute decoder."""

    def __init__(self, num_tokens=16):
        super().__init__()
        torch.manual_seed(3)
        self.logits = nn.Embedding(num_tokens, num_tokens)

    def forward(self, ids):
        return self.logits(ids)


HF_VOCAB = 64


def tiny_hf_llama():
    """A random 2-layer Llama of `HF_VOCAB` tokens."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=HF_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.2, bos_token_id=1,
                         eos_token_id=2)
    return LlamaForCausalLM(config).eval()


def hf_char_tokenizer():
    """A character-level fast tokenizer built in-process (no download): ids 0 pad, 1 bos, 2 eos, then characters."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = "abcdefghijklmnopqrstuvwxyz0123456789 :|"
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{c: i + 4 for i, c in enumerate(chars)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


ROOT = Path(__file__).resolve().parents[1]
SILENCE_S = 1200  # a run that writes nothing for 20 minutes is hung: the slowest phases print within a minute, loaded
LIMIT_S = 4 * 3600  # a run that goes on printing for 4 hours is a runaway loop (the slowest takes minutes, loaded)


class HungProcess(AssertionError):
    """A subprocess killed for writing nothing for `silence_s` seconds (or running past `limit_s`)."""


def run_watched(command: list[str], *, silence_s: float = SILENCE_S, limit_s: float = LIMIT_S, env: dict | None = None,
                cwd=None) -> subprocess.CompletedProcess:
    """`subprocess.run(command, capture_output=True, text=True)` with a hang guard that follows progress instead of
    a wall-clock timeout: the run (its whole process group: torchrun's workers too) is killed only when it writes
    nothing to stdout or stderr for `silence_s` seconds, or runs past `limit_s`; then `HungProcess` says so with the
    last output. A loaded machine makes a run slower, never silent for minutes (bars and stage lines keep coming), so
    slowness alone never fails a test. The child's Python output is unbuffered so its prints arrive as made, and it
    imports the library from this checkout (PYTHONPATH). The result has the child's `pid`."""
    env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd,
                               start_new_session=True)
    chunks: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
    last_output = [time.monotonic()]

    def follow(stream, name):
        for chunk in iter(lambda: os.read(stream.fileno(), 65536), b""):
            chunks[name].append(chunk)
            last_output[0] = time.monotonic()

    readers = [threading.Thread(target=follow, args=(process.stdout, "stdout"), daemon=True),
               threading.Thread(target=follow, args=(process.stderr, "stderr"), daemon=True)]
    for reader in readers:
        reader.start()
    started, why = time.monotonic(), None
    while process.poll() is None and why is None:
        time.sleep(0.2)
        now = time.monotonic()
        if now - last_output[0] > silence_s:
            why = f"wrote nothing for {silence_s:g} s"
        elif now - started > limit_s:
            why = f"ran past {limit_s:g} s"
    if why is not None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    for reader in readers:
        reader.join(timeout=10)
    stdout, stderr = (b"".join(chunks[name]).decode(errors="replace") for name in ("stdout", "stderr"))
    if why is not None:
        raise HungProcess(f"{' '.join(map(str, command))} {why} and was killed as hung; its last output:\n"
                          f"{stdout[-1500:]}\n{stderr[-1500:]}")
    done = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    done.pid = process.pid
    return done
