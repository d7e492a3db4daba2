"""An experiment runner for self-improvement: arms over the same prompts and seeds, measured the same way.

For each seed: one seed model is trained (SFT on instruction examples, then judge-training examples built from its
OWN answers, `own_answer_judge_examples`, and optionally a round on the judge's mistakes, `judge_mistakes`; all
labelled once, before iteration 1) and shared by every arm. Its task and settings: experiment/settings.py; its
measurements: experiment/measure.py. Each arm then runs `iterations` preference stages
from that model (the arms: experiment/arms.py), each through `SelfRewardingTrainer` on the same prompts as every
other arm, and after each the model is measured on held-out prompts:
- `exact_match`: greedy answers the task's checker accepts,
- `judge_bacc`: the model's LLM-as-a-judge (greedy, one judgement) against the checker on the model's own sampled
  answers, balanced accuracy (mean of the rates on right and on wrong answers), a score above the middle of the
  judge's scale meaning "right",
- `vote_bacc`: the same for self-consistency, an answer in the strict majority of its prompt's samples meaning "right",
- for the `meta_reward` arm (Meta-Rewarding), also the judge pairs made and the share whose chosen judgement the
  checker agrees with (`judge_pairs_better`); when a run has that arm, the shared seed model also learns the
  meta-judge's format (`meta_judge_examples`, from the same checker-labelled answers as the judge's EFT examples),
- from the stage's pair generation (the checker as verifier): pairs kept, and the share whose chosen answer the checker
  rates better / worse / neither (`pairs_better`, `pairs_worse`, `pairs_neither`).
The model before any preference stage is the `sft` row at iteration 0. Only the public API is used; every row is
appended to `runs.jsonl` as soon as it is measured, and a rerun skips the rows already there (each iteration's
stage also resumes from its own checkpoints).
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from self_rewarding_lm_pytorch import PairGenerationError, SelfRewardingTrainer, SFTConfig
from self_rewarding_lm_pytorch.experiment.arms import DEFAULT_ARMS, Arm
from self_rewarding_lm_pytorch.experiment.measure import measure
from self_rewarding_lm_pytorch.experiment.settings import ExperimentSettings, ExperimentTask, run_record
from self_rewarding_lm_pytorch.judging.eft import (
    judge_mistakes,
    labelled_judge_examples,
    meta_judge_examples,
    own_answer_judge_examples,
    two_point_targets,
)

# the run


@dataclass
class ExperimentRunner:
    task: ExperimentTask
    settings: ExperimentSettings = field(default_factory=ExperimentSettings)
    arms: Sequence[Arm] = DEFAULT_ARMS
    out_dir: Path = Path("experiments/self_improvement")
    show_progress: bool = True
    # every trainer's Accelerator (seed model and iterations): the CPU by default, as the recorded runs; {} puts the
    # model on the GPU Accelerate finds (measurement follows the model's device)
    accelerate_kwargs: dict = field(default_factory=lambda: dict(cpu=True))
    # what settings.json records beside the settings, e.g. the command line's task and flags
    # (examples/self_improvement.py), so that scripts reading the folder build the same task
    record: dict = field(default_factory=dict)

    def __post_init__(self):
        self.out_dir = Path(self.out_dir)
        names = [arm.name for arm in self.arms]
        if len(set(names)) != len(names) or "sft" in names:
            raise ValueError(f"arm names must be distinct and not 'sft' (the seed model's row), got {names}")
        for name in ("judge_refresh_share", "meta_judge_refresh_share"):
            if not 0 <= getattr(self.settings, name) <= 1:
                raise ValueError(f"ExperimentSettings.{name} is a share of the seed model's examples, in [0, 1]; "
                                 f"got {getattr(self.settings, name)}")
        if self.settings.eft_mistake_prompts < 0 or self.settings.eft_judged_right_per_mistake < 0:
            raise ValueError(f"ExperimentSettings.eft_mistake_prompts and eft_judged_right_per_mistake must be >= 0 (0 "
                             f"prompts: no mistake round); got {self.settings.eft_mistake_prompts} and "
                             f"{self.settings.eft_judged_right_per_mistake}")
        if self.settings.meta_judge_repeats < 1:
            raise ValueError(f"ExperimentSettings.meta_judge_repeats is how many times each judge-training epoch holds "
                             f"the meta-judge examples: >= 1, got {self.settings.meta_judge_repeats}")
        if self.trains_meta_judge and self.task.meta_judge_config is None:
            raise ValueError(f"arms {[a.name for a in self.arms if a.trains_meta_judge]} meta-judge: the task needs a "
                             f"meta_judge_config")

    @property
    def trains_meta_judge(self) -> bool:
        return any(arm.trains_meta_judge for arm in self.arms)

    @property
    def runs_path(self) -> Path:
        return self.out_dir / "runs.jsonl"

    def done_rows(self) -> list[dict]:
        if not self.runs_path.is_file():
            return []
        with open(self.runs_path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def record_row(self, row: dict):
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.runs_path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def run(self) -> list[dict]:
        """Every seed, arm and iteration not already in runs.jsonl; returns all rows."""
        settings, task = self.settings, self.task
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "settings.json").write_text(json.dumps(run_record(settings, self.record), indent=1))
        done = {(r["seed"], r["arm"], r["iteration"]) for r in self.done_rows()}
        eval_prompts = task.prompts(settings.num_eval_prompts, settings.eval_split_seed)
        judge_prompts = task.prompts(settings.num_judge_eval_prompts, settings.eval_split_seed + 1)
        held_out = set(eval_prompts) | set(judge_prompts)

        # a bar over the seeds (alike, so its ETA holds from the second seed on), and below it one per seed's phase:
        # the seed model's stages, then the arms' iterations (units of one kind each, so neither ETA mixes them)
        bar = tqdm(total=len(settings.seeds), desc="experiment: seeds", unit="seed", disable=not self.show_progress,
                   position=0)
        for seed in settings.seeds:
            seed_dir = self.out_dir / f"seed-{seed}"
            phases = tqdm(total=len(self.seed_phases()) + 1, desc=f"seed {seed}: seed model", unit="phase",
                          disable=not self.show_progress, position=1, leave=False)
            model, judge_examples, meta_examples = self.seed_model(seed, seed_dir, held_out, phases)
            seed_state = {k: v.clone() for k, v in model.state_dict().items()}
            phases.set_postfix(phase="measure")
            if (seed, "sft", 0) not in done:
                self.record_row(dict(seed=seed, arm="sft", iteration=0, **measure(model, task, settings, eval_prompts, judge_prompts, seed)))
            phases.update(1)
            phases.close()
            # the same fresh prompts for every arm: iteration i draws from seed-specific, held-out-free prompts
            iteration_prompts = [
                [p for p in task.prompts(2 * settings.prompts_per_iteration, 1_000 * seed + i) if p not in held_out]
                [: settings.prompts_per_iteration]
                for i in range(1, settings.iterations + 1)
            ]
            steps = tqdm(total=len(self.arms) * settings.iterations, desc=f"seed {seed}: arms", unit="iteration",
                         disable=not self.show_progress, position=1, leave=False)
            for arm in self.arms:
                model.load_state_dict(seed_state)
                for iteration in range(1, settings.iterations + 1):
                    steps.set_postfix(arm=arm.name, iteration=iteration)
                    stage = replace(arm.stage(iteration_prompts[iteration - 1], task, settings),
                                    name=arm_stage_name(arm.name))
                    plan = [stage, *judge_refresh(judge_examples, settings, meta_examples)]
                    trainer = SelfRewardingTrainer(
                        model, finetune_configs=plan, tokenizer_encode=task.encode, tokenizer_decode=task.decode,
                        self_reward_prompt_config=task.reward_config, pad_id=task.pad_id, eos_id=task.eos_id,
                        checkpoints_folder=seed_dir / arm.name / f"iteration-{iteration}",
                        accelerate_kwargs=self.accelerate_kwargs, seed=1_000 * seed + iteration,
                    )
                    try:
                        summary = trainer()[0]
                    except PairGenerationError as error:  # a result, not a crash: this judge made no pair
                        summary = dict(pairs=0, no_pairs=str(error)[:300])
                    if (seed, arm.name, iteration) not in done:
                        row = dict(seed=seed, arm=arm.name, iteration=iteration, **pair_numbers(summary))
                        row.update(measure(model, task, settings, eval_prompts, judge_prompts, seed))
                        self.record_row(row)
                    steps.update(1)
            steps.close()
            bar.update(1)
        bar.close()
        return self.done_rows()

    def seed_phases(self) -> list[str]:
        """The seed model's phases, in order: its stages (whose files are named after them) and the labelling
        between them."""
        mistakes = ["judge mistakes", "judge-mistakes"] if self.settings.eft_mistake_prompts else []
        return ["instructions", "judge examples", "judge-training", *mistakes]

    def seed_model(self, seed: int, seed_dir: Path, held_out: set[str], phases: tqdm | None = None
                   ) -> tuple[nn.Module, list, list]:
        """SFT on instruction examples (the stage `instructions`), then on judge examples from the model's own
        answers (labelled once by the checker; `judge-training`), then (`eft_mistake_prompts`) on the judge's mistakes
        (`judge-mistakes`), as one plan resumed from `seed_dir/seed-model`; returns the model, its judge examples and
        its meta-judge examples (the second stage's; no meta-judge examples in a run without a meta-judge).
        `phases`: a bar advanced after each of `seed_phases()`."""
        task, settings = self.task, self.settings

        def advance():  # after each of `seed_phases()`
            if phases is not None:
                phases.update(1)
                following = self.seed_phases()[phases.n:]
                phases.set_postfix(phase=following[0] if following else "measure")

        if phases is not None:
            phases.set_postfix(phase=self.seed_phases()[0])
        torch.manual_seed(seed)
        model = task.make_model(seed)
        ift = task.instruction_examples(settings.num_instruction_examples, seed)
        sft = dict(batch_size=32, grad_accum_steps=1, dropout=0.0, learning_rate=settings.sft_learning_rate,
                   end_learning_rate=settings.sft_learning_rate / 10, warmup_steps=10)

        def plan(stages):
            return SelfRewardingTrainer(
                model, finetune_configs=stages, tokenizer_encode=task.encode, tokenizer_decode=task.decode,
                pad_id=task.pad_id, eos_id=task.eos_id, checkpoints_folder=seed_dir / "seed-model",
                accelerate_kwargs=self.accelerate_kwargs, seed=seed,
            )

        instructions = SFTConfig(train_dataset=ift, num_epochs=settings.sft_epochs, name="instructions", **sft)
        plan([instructions])()
        advance()

        eft_prompts = [p for p in task.prompts(2 * settings.num_eft_prompts, 500 + seed) if p not in held_out]
        judge_set = own_answer_judge_examples(
            model, eft_prompts[: settings.num_eft_prompts], labeller=task.checker, reward_config=task.reward_config,
            tokenizer_encode=task.encode, tokenizer_decode=task.decode, targets=two_point_targets(),
            rationale=task.judge_rationale,
            num_samples=settings.eft_samples_per_prompt, max_new_tokens=task.max_new_tokens,
            temperature=settings.eft_temperatures, top_p_threshold=None, pad_id=task.pad_id, eos_id=task.eos_id, seed=seed,
            show_progress=self.show_progress,
        )
        meta_examples = meta_judge_examples(
            judge_set.labelled, reward_config=task.reward_config, meta_judge_config=task.meta_judge_config,
            tokenizer_encode=task.encode, targets=two_point_targets(), rationale=task.judge_rationale,
            wrong_judgement=task.meta_wrong_judgement, balance_wrong_judgements=settings.meta_balance_wrong_judgements,
            eos_id=task.eos_id, seed=seed,
        ) if self.trains_meta_judge else []
        advance()
        (seed_dir / "eft.json").write_text(json.dumps(dict(meta_judge_examples=len(meta_examples),
            target_counts=judge_set.target_counts, before_balancing=judge_set.label_counts_before_balancing,
            answers_sampled=judge_set.answers_sampled, distinct_answers=judge_set.distinct_answers)))
        # the two-stage plan starts from the same initial weights as the one-stage plan above, so its first stage is
        # recognised as finished (a stage's fingerprint includes the weights it started from)
        torch.manual_seed(seed)
        model = task.make_model(seed)
        # IFT replayed beside EFT, so that learning to judge does not erase answering; at a lower learning rate, so
        # that the answers the judge learned on stay the answers it will judge
        eft_sft = dict(sft, learning_rate=settings.sft_learning_rate * settings.eft_learning_rate_factor,
                       end_learning_rate=settings.sft_learning_rate * settings.eft_learning_rate_factor / 10)
        replayed = ift[: round(len(ift) * settings.eft_instruction_replay_share)]
        stages = [instructions,
                  SFTConfig(train_dataset=judge_set.examples + meta_examples * settings.meta_judge_repeats + replayed,
                            num_epochs=settings.eft_epochs, name="judge-training", **eft_sft)]
        plan(stages)()
        advance()
        if settings.eft_mistake_prompts:
            mistake_examples = self.judge_mistake_examples(model, seed, held_out, seed_dir)
            advance()
            if mistake_examples:  # none: the judge is right on every answer, and there is nothing to train on
                torch.manual_seed(seed)
                model = task.make_model(seed)
                mistake_stage = SFTConfig(train_dataset=mistake_examples + replayed,
                                          num_epochs=settings.eft_mistake_epochs, name="judge-mistakes", **eft_sft)
                plan([*stages, mistake_stage])()
            advance()
        return model, judge_set.examples, meta_examples

    def judge_mistake_examples(self, model: nn.Module, seed: int, held_out: set[str], seed_dir: Path) -> list:
        """`eft_mistake_prompts`' round: judge examples of the seed judge's mistakes on fresh checker-labelled answers,
        and of `eft_judged_right_per_mistake` times as many answers (seeded) it judged right."""
        task, settings = self.task, self.settings
        prompts = [p for p in task.prompts(2 * settings.eft_mistake_prompts, 4_000 + seed) if p not in held_out]
        pool = own_answer_judge_examples(
            model, prompts[: settings.eft_mistake_prompts], labeller=task.checker, reward_config=task.reward_config,
            tokenizer_encode=task.encode, tokenizer_decode=task.decode, targets=two_point_targets(),
            rationale=task.judge_rationale, num_samples=settings.eft_samples_per_prompt,
            max_new_tokens=task.max_new_tokens, temperature=settings.eft_mistake_temperatures, top_p_threshold=None,
            balance=False, pad_id=task.pad_id, eos_id=task.eos_id, seed=seed, show_progress=self.show_progress,
        ).labelled
        missed = judge_mistakes(model, pool, reward_config=task.reward_config, tokenizer_encode=task.encode,
                                tokenizer_decode=task.decode, targets=two_point_targets(),
                                max_new_tokens=task.judge_max_new_tokens, pad_id=task.pad_id, eos_id=task.eos_id,
                                show_progress=self.show_progress)
        misjudged = [item for item, mistake in zip(pool, missed) if mistake]
        judged_well = [item for item, mistake in zip(pool, missed) if not mistake]
        beside = round(len(misjudged) * settings.eft_judged_right_per_mistake)
        chosen = misjudged + random.Random(seed).sample(judged_well, min(beside, len(judged_well)))
        (seed_dir / "eft_mistakes.json").write_text(json.dumps(dict(
            answers=len(pool), mistakes=len(misjudged),
            mistakes_on_right_answers=sum(bool(label) for _, _, label in misjudged))))
        return labelled_judge_examples(chosen, reward_config=task.reward_config, tokenizer_encode=task.encode,
                                       targets=two_point_targets(), rationale=task.judge_rationale, eos_id=task.eos_id)


def judge_refresh(judge_examples: list, settings: ExperimentSettings, meta_examples: list = ()) -> list[SFTConfig]:
    """The stage that follows each preference iteration when `settings.judge_refresh_share` or
    `settings.meta_judge_refresh_share` is > 0: the first share of each kind of seed example, one epoch."""
    replayed = (judge_examples[: round(len(judge_examples) * settings.judge_refresh_share)]
                + list(meta_examples[: round(len(meta_examples) * settings.meta_judge_refresh_share)]))
    if not replayed:
        return []
    lr = settings.dpo_learning_rate
    return [SFTConfig(train_dataset=replayed, num_epochs=1, batch_size=32, grad_accum_steps=1, dropout=0.0,
                      learning_rate=lr, end_learning_rate=lr / 10, name="judge-refresh")]


def arm_stage_name(arm: str) -> str:
    """The file label of an arm's preference stage: its name as a file-name fragment, then "dpo"
    (`self_judge` -> `stage-00-self-judge-dpo.pt` in `seed-S/self_judge/iteration-I/`)."""
    words = re.findall(r"[a-z0-9]+", arm.lower())
    return "-".join([*words, "dpo"])[:64]


def pair_numbers(summary: dict) -> dict:
    """Pairs kept and the checker's view of them, from a preference stage's summary."""
    better = summary.get("pairs_chosen_verified_better", 0.0)
    worse = summary.get("pairs_chosen_verified_worse", 0.0)
    row = dict(pairs=summary.get("pairs", 0), pairs_better=better, pairs_worse=worse,
               pairs_neither=1.0 - better - worse if summary.get("pairs") else math.nan)
    row.update({k: v for k, v in summary.items() if k.startswith("pairs_filtered/") or k == "no_pairs"})
    if "judge_pairs" in summary:  # a meta-reward stage: `pairs` are its actor pairs, as in the other arms
        row.update(pairs=summary["actor_pairs"], judge_pairs=summary["judge_pairs"],
                   meta_parse_rate=summary["meta_parse_rate"], meta_first_position_rate=summary["meta_first_position_rate"],
                   judge_pairs_better=summary.get("judge_pairs_chosen_verified_better", 0.0),
                   judge_pairs_worse=summary.get("judge_pairs_chosen_verified_worse", 0.0))
        row.update({k: v for k, v in summary.items() if k.startswith("judge_pairs_dropped/")})
    return row
