"""The paper's plan on an HF chat model with LoRA: SFT on seed data (IFT + EFT), then two self-rewarding iterations.

    pip install -e ".[peft,datasets,tensorboard]"      # from the checkout, never by the package name
    python examples/hf_chat_model.py

As written it builds a tiny random Llama and a character-level tokenizer with a chat template in-process, and runs
on CPU in a few minutes. To run a real instruct model on a GPU, set CHECKPOINT below to its folder (or hub name):
that is the only line that changes. The model is then loaded in bf16, judges with the paper's prompt, and makes the
paper's pair counts (3,964 and 6,942); run it under `accelerate launch` for several GPUs.

Every prompt (the task's and the judge's) goes through the tokenizer's chat template; LoRA adapters are the only
weights that train, and each DPO iteration's reference is the same model with its adapters off. The seed data, the
prompts and the EFT examples are `datasets.Dataset`s read by field name. Numbers go to TensorBoard
(`tensorboard --logdir checkpoints/hf_chat/logs`); the merged model is written to checkpoints/hf_chat/merged.
"""

from __future__ import annotations

import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from self_rewarding_lm_pytorch import (
    PromptFields,
    RewardConfig,
    SelfRewardingTrainer,
    SFTFields,
    create_default_paper_config,
)
from self_rewarding_lm_pytorch.judging.eft import EFTFields
from self_rewarding_lm_pytorch.models.hf import ChatTemplate, HFCausalLM, hf_tokenizer_functions
from self_rewarding_lm_pytorch.pairs.selection import reward_within
from self_rewarding_lm_pytorch.tasks.sort_digits import SortDigitsTask, graded_score, solve

CHECKPOINT = None  # e.g. "/models/Qwen2.5-1.5B-Instruct": a real chat model (on a GPU); None: a tiny random Llama

TINY = CHECKPOINT is None


def tiny_chat_model():
    """A random 2-layer Llama and a character-level tokenizer with a chat template, built here (no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 :|.,<>/-'\"!?\n"
    roles = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
    vocab = {token: i for i, token in enumerate(["<pad>", "<s>", "</s>", "<unk>", *chars, *roles])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    backend.decoder = decoders.Fuse()
    template = ("{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '<|end|>' }}{% endfor %}"
                "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>", additional_special_tokens=roles, chat_template=template)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512)
    return LlamaForCausalLM(config), tokenizer


def seed_data(task: SortDigitsTask, num_ift: int, num_eft: int):
    """The paper's seed data shape: instruction + response (IFT), and judge examples (EFT) with a judgement."""
    ift, eft = [], []
    for _ in range(num_ift):
        digits = task.random_digits()
        ift.append(dict(instruction=f"sort {' '.join(map(str, digits))}:", response=solve(digits)))
    for _ in range(num_eft):
        digits = task.random_digits()
        prompt, response = f"sort {' '.join(map(str, digits))}:", task.candidate_response(digits)
        score = 5 if graded_score(prompt, response) == 5 else 1
        eft.append(dict(prompt=prompt, response=response, judgement=f"Score: {score}"))
    return Dataset.from_list(ift), Dataset.from_list(eft)


def main():
    if TINY:
        model, tokenizer = tiny_chat_model()
    else:
        model = AutoModelForCausalLM.from_pretrained(CHECKPOINT, dtype=torch.bfloat16)
        tokenizer = AutoTokenizer.from_pretrained(CHECKPOINT)
    # a random model's embeddings mean nothing, so the tiny one trains them too; a real model trains adapters only
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                      modules_to_save=["embed_tokens", "lm_head"] if TINY else None)
    model = HFCausalLM(get_peft_model(model, lora))

    # task prompts and judge prompts go through the chat template; eos_id is the template's end of turn
    encode, decode, eos_id = hf_tokenizer_functions(tokenizer, chat_template=True)
    chat = ChatTemplate(tokenizer)
    # the tiny model gets a short judge prompt; a real model the paper's (RewardConfig's default)
    reward_config = RewardConfig("Judge the answer. {{ prompt }} {{ response }}", score_range=(0, 5)) if TINY else RewardConfig()

    task = SortDigitsTask(length=4, seed=0)
    ift, eft = seed_data(task, *((1000, 2000) if TINY else (3200, 1600)))
    train_sft = torch.utils.data.ConcatDataset([
        SFTFields(ift, chat.encode_example, prompt_field="instruction", response_field="response"),
        EFTFields(eft, chat.encode_example, reward_config, judgement_field="judgement"),
    ])
    prompts = PromptFields(Dataset.from_list([dict(prompt=p) for p in task.prompts(4000 if TINY else 20000)]))

    sizes = dict(num_generated_preference_pairs=(64, 64), dpo_num_train_steps=16) if TINY else {}
    stages = create_default_paper_config(
        train_sft_dataset=train_sft,
        self_reward_prompt_dataset=prompts,
        sft_config=dict(batch_size=32, grad_accum_steps=1, learning_rate=1e-2 if TINY else 2e-4,
                        end_learning_rate=1e-3 if TINY else 2e-5, dropout=0.0),
        self_reward_config=dict(
            batch_size=16, learning_rate=1e-4 if TINY else 5e-6, end_learning_rate=1e-5 if TINY else 5e-7,
            nll_weight=1.0, dropout=0.0, num_judgements=2 if TINY else 3, judge_max_new_tokens=8 if TINY else 256,
            response_max_new_tokens=16 if TINY else 512, prompt_batch_size=32, is_valid_reward=reward_within(0, 5),
            verifier=graded_score,
        ),
        **sizes,
    )
    trainer = SelfRewardingTrainer(
        model, finetune_configs=stages, tokenizer_encode=encode, tokenizer_decode=decode, eos_id=eos_id,
        self_reward_prompt_config=reward_config, checkpoints_folder="./checkpoints/hf_chat",
        accelerate_kwargs=dict(cpu=True) if TINY else dict(mixed_precision="bf16"),
        log_with="tensorboard", project_name="hf_chat",
    )
    for summary in trainer():
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()})
    if trainer.accelerator.is_main_process:
        model.save_merged("./checkpoints/hf_chat/merged")  # one HF model, adapters merged in: from_pretrained loads it
        print("merged model saved to ./checkpoints/hf_chat/merged")


if __name__ == "__main__":
    main()
