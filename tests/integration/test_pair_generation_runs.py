

import torch
from helpers import generate

from self_rewarding_lm_pytorch.judging.judge_prompt import RewardConfig
from self_rewarding_lm_pytorch.judging.judges import SelfJudge
from self_rewarding_lm_pytorch.storage.pair_store import DPODataset
from self_rewarding_lm_pytorch.tasks.sort_digits import CharTokenizer, SortDigitsTask
from self_rewarding_lm_pytorch.training.sft import SFTTrainer

TOKENIZER = CharTokenizer()


def test_self_judge_after_judge_fine_tuning_makes_pairs(make_transformer, tmp_path):
    """The paper's loop in miniature: EFT teaches the judge format, then the model judges its own answers.
    About 2 s idle."""
    torch.manual_seed(0)
    reward_config = RewardConfig("{{ prompt }}|{{ response }}|")
    task = SortDigitsTask(length=3, seed=8)
    model = make_transformer(seed=1, num_tokens=CharTokenizer.num_tokens, max_seq_len=64, dim=64, depth=2)
    judge_data = task.judge_examples(512, reward_config.render, judge_answer=lambda s: f"Score: {round(s)}")
    SFTTrainer(model, train_dataset=judge_data, batch_size=32, grad_accum_steps=1, num_epochs=3, learning_rate=3e-3,
               end_learning_rate=3e-4, dropout=0.0, accelerate_kwargs=dict(cpu=True)).train()

    judge = SelfJudge(model, reward_config, tokenizer_encode=TOKENIZER.encode, tokenizer_decode=TOKENIZER.decode,
                      num_judgements=2, max_new_tokens=10, temperature=0.7, eos_id=0)
    stats = generate(model, task.prompts(32), judge, tmp_path, num_preference_pairs=4, max_seq_len=64)
    assert stats.parse_rate > 0.9 and stats.pairs_made == 4
    record = DPODataset(tmp_path).records()[0]
    assert len(record["chosen_judge_outputs"]) == 2 and record["chosen_judge_outputs"][0].startswith("Score: ")
