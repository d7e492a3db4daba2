"""Quickstart: the whole self-rewarding loop on a tiny model and a verifiable task, on CPU in a few minutes.

Task: sort a short list of digits ("sort 3 1 2 5 4:" -> " 1 2 3 4 5"), from `self_rewarding_lm_pytorch.tasks`.
Stages:
  0. SFT on instruction examples (IFT) and judge-format examples (EFT): the model learns to answer and to judge
  1. SPIN: the model learns to prefer the real answers over its own
  2. self-rewarding DPO by self-consistency (ScPO): the model answers fresh prompts 8 times, its answers vote, and
     it trains on its most- vs least-agreed answer (no checker, no label: the model's own judgement)
  3. external-reward DPO: the exact checker's graded score judges instead
A model this small judges its own answers at chance with the LLM-as-a-judge prompt (its pairs make it worse: see
docs/results.md), while its answers' votes are right far more often than wrong: that is the recipe used here.
After every stage it prints held-out exact-match accuracy (greedy) and how often the model's judgement of its own
held-out answer is in the judge format ("judge format"), plus the stage's loss, pairs made and the parse rate of
its judgements during pair generation ("judge parse"). Checkpoints go to
./checkpoints/quickstart (run again to resume; SELF_REWARDING_CLEAR_CHECKPOINTS=1 starts over).
"""

from __future__ import annotations

import time

import torch
from x_transformers import Decoder, TransformerWrapper

from self_rewarding_lm_pytorch import (
    ExternalRewardDPOConfig,
    RewardConfig,
    SelfConsistencyDPOConfig,
    SelfPlayConfig,
    SelfRewardingTrainer,
    SFTConfig,
    sample,
)
from self_rewarding_lm_pytorch.judging.judges import strip_response
from self_rewarding_lm_pytorch.tasks.sort_digits import (
    CharTokenizer,
    SortDigitsTask,
    answer_key,
    graded_score,
    is_correct,
)

MAX_SEQ_LEN = 48
tokenizer = CharTokenizer()
task = SortDigitsTask(length=5, seed=0)

# a short judge prompt: the paper's 1.8k-character prompt would not fit a 48-token model
reward_config = RewardConfig(prompt_template="judge {{ prompt }}{{ response }}|", reward_regex_template="Score: {{ reward }}")


def judge_answer(score: float) -> str:
    """EFT targets on a two-point scale (5: correct, 1: not): a tiny model learns to check an answer far more
    reliably than to grade partial credit, and a reliable judge is what makes self-rewarding work."""
    return f"Score: {5 if score == 5 else 1}"


held_out_prompts = task.prompts(200)


@torch.no_grad()
def evaluate(model) -> dict:
    """Held-out exact-match accuracy (greedy) and how often the model's judgement of its answer parses."""
    prompt_ids = [tokenizer.encode(p) for p in held_out_prompts]
    answers = sample(model, prompt_ids, MAX_SEQ_LEN, temperature=0.0, eos_id=tokenizer.eos_id, max_new_tokens=12)
    responses = [tokenizer.decode(strip_response(a, -1, tokenizer.eos_id)) for a in answers]
    judge_prompts = [tokenizer.encode(reward_config.render(p, r)) for p, r in zip(held_out_prompts, responses)]
    judgements = sample(model, judge_prompts, temperature=0.0, eos_id=tokenizer.eos_id, max_new_tokens=10)
    parsed = [reward_config.parse(tokenizer.decode(j)) is not None for j in judgements]
    return dict(
        accuracy=sum(is_correct(p, r) for p, r in zip(held_out_prompts, responses)) / len(responses),
        judge_format=sum(parsed) / len(parsed),
    )


def main():
    torch.manual_seed(0)
    model = TransformerWrapper(num_tokens=tokenizer.num_tokens, max_seq_len=MAX_SEQ_LEN,
                               attn_layers=Decoder(dim=96, depth=3, heads=4, rotary_pos_emb=True), use_abs_pos_emb=False)

    seed_data = task.instruction_examples(1000) + task.judge_examples(4000, reward_config.render, judge_answer)
    training = dict(batch_size=32, grad_accum_steps=1, dropout=0.0)
    dpo = dict(training, num_train_steps=40, learning_rate=1e-5, end_learning_rate=1e-6, beta=0.1, nll_weight=1.0)
    pairs = dict(num_preference_pairs=128, prompt_batch_size=32, response_max_new_tokens=12, max_seq_len=MAX_SEQ_LEN,
                 temperature=0.7)

    stages = [
        SFTConfig(train_dataset=seed_data, num_epochs=1, learning_rate=2e-3, end_learning_rate=2e-4, warmup_steps=20, **training),
        SelfPlayConfig(train_sft_dataset=task.instruction_examples(512), max_seq_len=MAX_SEQ_LEN, num_train_steps=16,
                       learning_rate=1e-5, spin_kwargs=dict(λ=0.1, nll_weight=1.0), **training),
        SelfConsistencyDPOConfig(prompt_dataset=task.prompts(1024), answer_key=answer_key, min_vote_margin=0.5,
                                 margin_weighted_loss=True, verifier=graded_score,
                                 **dict(pairs, num_candidate_responses=8, temperature=0.4), **dpo),
        ExternalRewardDPOConfig(prompt_dataset=task.prompts(1024), reward_fn=graded_score, **pairs, **dpo),
    ]

    trainer = SelfRewardingTrainer(
        model,
        finetune_configs=stages,
        tokenizer_encode=tokenizer.encode,
        tokenizer_decode=tokenizer.decode,
        self_reward_prompt_config=reward_config,
        eos_id=tokenizer.eos_id,
        checkpoints_folder="./checkpoints/quickstart",
        accelerate_kwargs=dict(cpu=True),
        evaluate=evaluate,
    )

    start = time.time()
    before = evaluate(model)
    summaries = trainer()

    print(f"\nbefore training: held-out accuracy {before['accuracy']:.3f}, judge format {before['judge_format']:.3f}")
    print(f"{'stage':<25}{'loss':>8}{'pairs':>7}{'judge parse':>13}{'held-out acc':>14}{'judge format':>14}  checkpoint")
    for s in summaries:
        parse = f"{s['judge_parse_rate']:.3f}" if "judge_parse_rate" in s else "-"
        print(f"{s['stage']:>2} {s['kind']:<22}{s.get('loss', float('nan')):>8.4f}{s.get('pairs', '-'):>7}{parse:>13}"
              f"{s['accuracy']:>14.3f}{s['judge_format']:>14.3f}  {s['checkpoint']}{' (resumed)' * s.get('resumed', False)}")
    for s in summaries:
        if "judge_verifier_agreement" in s:
            print(f"stage {s['stage']} ({s['kind']}): the model's own ranking agrees with the exact checker in "
                  f"{s['judge_verifier_agreement']:.1%} of the pairs the checker tells apart; chosen verified better in "
                  f"{s['pairs_chosen_verified_better']:.1%} of pairs, worse in {s['pairs_chosen_verified_worse']:.1%}")
    print(f"done in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
