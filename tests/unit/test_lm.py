"""SmolLM2-135M-Instruct converted once from the shipped GGUF, cached, and generating greedily."""

import pytest
import torch

from selfevolve.config import Settings
from selfevolve.errors import TrainingError
from selfevolve.distill.lm import chat_ids, default_model_dir, generate, load_causal_lm, shipped_gguf


@pytest.fixture(scope="module")
def smollm():
    torch.set_num_threads(1)
    return load_causal_lm(None, Settings())


def test_shipped_gguf_is_found():
    assert shipped_gguf().name.endswith(".gguf") and shipped_gguf().stat().st_size > 50_000_000


def test_cached_conversion_is_reused(smollm):
    d = default_model_dir(Settings())
    weights = d / "model.safetensors"
    assert weights.is_file()
    before = weights.stat().st_mtime_ns
    model, tok = load_causal_lm(None, Settings())
    assert weights.stat().st_mtime_ns == before  # read from the cache, not converted again
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576


def test_tokenizer_ends_turns_with_im_end(smollm):
    _, tok = smollm
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id is not None
    ids = chat_ids(tok, "hi")
    assert tok.decode(ids).rstrip().endswith("<|im_start|>assistant")


@pytest.mark.parametrize("prompt,expected", [("What is the capital of France?", "Paris")])
def test_generate_answers_with_confidence(smollm, prompt, expected):
    model, tok = smollm
    text, conf = generate(model, tok, prompt, 16)
    assert expected in text
    assert 0.0 < conf <= 1.0


def test_other_models_are_named_by_local_path(tmp_path):
    with pytest.raises(TrainingError):
        load_causal_lm(tmp_path / "missing", Settings())
    with pytest.raises(TrainingError):
        load_causal_lm(tmp_path, Settings())  # a directory without a checkpoint


def test_the_conversion_runs_once(tmp_path, monkeypatch):
    """`selfevolve setup-models` (every `make demo`) converts the GGUF the first time only."""
    from selfevolve.distill import lm

    settings = Settings(home=tmp_path, cache_dir=tmp_path / "cache")
    made = []

    def convert(gguf, out_dir):
        made.append(out_dir)
        out_dir.mkdir(parents=True)
        (out_dir / "config.json").write_text("{}")
        (out_dir / "model.safetensors").write_bytes(b"")
        return out_dir

    monkeypatch.setattr(lm, "convert_gguf", convert)
    monkeypatch.setattr(lm, "shipped_gguf", lambda: tmp_path / "model.gguf")
    assert lm.ensure_converted(settings) == lm.ensure_converted(settings) == default_model_dir(settings)
    assert made == [default_model_dir(settings)]
