"""Reference log-probs computed once, before a DPO stage on external pairs, so training holds no reference model.

The reference is the model as it is when the stage starts; its log-probs of every pair's chosen and rejected
responses are computed in one pass (each process scores its share, in batches) and attached to the pairs,
exactly as pair generation and SPIN store them. The loss is then the live reference's loss, without a second
copy of the model in memory and without a second forward per pair at every step.
"""

from __future__ import annotations

import torch
from accelerate import Accelerator
from accelerate.utils import extract_model_from_parallel, gather_object
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from self_rewarding_lm_pytorch.training.dpo_batches import normalize_pair
from self_rewarding_lm_pytorch.training.logprobs import Reduction, reference_logprobs


class WithReferenceLogprobs(Dataset):
    """`dataset`'s pair dicts with `chosen_ref_logp`, `rejected_ref_logp` added (tokens are not copied)."""

    has_ref_logps = True

    def __init__(self, dataset: Dataset, chosen_ref_logp: Tensor, rejected_ref_logp: Tensor):
        self.dataset = dataset
        self.chosen_ref_logp, self.rejected_ref_logp = chosen_ref_logp, rejected_ref_logp
        self.pad_id = getattr(dataset, "pad_id", -1)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return dict(self.dataset[index], chosen_ref_logp=self.chosen_ref_logp[index],
                    rejected_ref_logp=self.rejected_ref_logp[index])


@torch.no_grad()
def with_reference_logprobs(
    model: nn.Module,
    dataset: Dataset,
    *,
    accelerator: Accelerator,
    pad_id: int,
    reduction: Reduction = "sum",
    batch_size: int = 16,
    desc: str = "dpo reference log-probs",
) -> WithReferenceLogprobs:
    """`dataset` with the reference log-probs of `model` as it is now (eval mode; adapters off for a LoRA model,
    like the live reference) under the accelerator's autocast, as the live reference would run. A bar (`desc`,
    main process) shows the pass: on thousands of pairs it takes minutes before the first training step."""
    model = extract_model_from_parallel(model)
    mine = list(range(len(dataset)))[accelerator.process_index :: accelerator.num_processes]
    # every process runs the same number of batches (a short share ends with empty ones): a sharded model's
    # forward is collective, so a rank with one pair fewer must still take part in the last one
    per_process = -(-len(dataset) // accelerator.num_processes)
    scored = []
    progress = tqdm(total=len(mine), desc=desc, unit="pair", disable=not accelerator.is_local_main_process)
    for start in range(0, per_process, batch_size):
        indices = mine[start : start + batch_size]
        pairs = [normalize_pair(dataset[i], pad_id, f"DPO train pair {i}") for i in indices]
        seqs = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
        prompt_len = torch.tensor([p["prompt_len"] for p in pairs] * 2)
        with accelerator.autocast():
            logps = reference_logprobs(model, seqs, prompt_len, pad_id, reduction).tolist()
        scored += [(i, logps[j], logps[len(indices) + j]) for j, i in enumerate(indices)]
        progress.update(len(indices))
    progress.close()
    if accelerator.num_processes > 1:
        scored = gather_object(scored)
    chosen, rejected = torch.full((len(dataset),), float("nan")), torch.full((len(dataset),), float("nan"))
    for index, chosen_logp, rejected_logp in scored:
        chosen[index], rejected[index] = chosen_logp, rejected_logp
    return WithReferenceLogprobs(dataset, chosen, rejected)

