"""A tiny distillation round (loss falls, checkpoint round-trips) and the training data built from real teachers."""

import json

import pytest
import torch

from selfevolve.config import Settings
from selfevolve.distill.config import DistillConfig
from selfevolve.distill.data import (
    Example,
    arc_examples,
    arc_options,
    collate,
    encode,
    gsm8k_examples,
    last_number,
    spelled_out,
    split_steps,
    strip_arc_prompt,
)
from selfevolve.distill.train import build_student, load_checkpoint, save_checkpoint, train
from selfevolve.errors import TrainingError
from selfevolve.distill.lm import default_model_dir, load_causal_lm


# Like the RouterBench tests: these read the recorded teacher outputs in ../shared/data, and skip (saying
# so) where a checkout has no ../shared beside it.
needs_shared = pytest.mark.skipif(not Settings().data_dir.is_dir(), reason="../shared/data absent")


@pytest.fixture(scope="module")
def settings():
    return Settings()


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory, settings):
    """A 2-layer random Llama with SmolLM2's real tokenizer: the real code path at a size 2 shared cores allow."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if not (default_model_dir(settings) / "config.json").is_file():
        load_causal_lm(None, settings)  # converts the shipped GGUF once
    tok = AutoTokenizer.from_pretrained(default_model_dir(settings))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                      bos_token_id=1, eos_token_id=2, pad_token_id=2,
                      initializer_range=0.5)  # at the default 0.02 a rank-8 adapter cannot move 49k tiny logits
    path = tmp_path_factory.mktemp("tiny")
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _examples():
    return [
        Example("Which is a metal?\nA) wood\nB) iron\nC) glass\nD) paper", "B", (), (1.0, 0.9, 1.0, 1.0), "arc"),
        Example("Tom has 2 apples and buys 3. How many?", "So Tom has 5 apples.", ("2 + 3 = 5",),
                (1.0, 0.9, 1.0, 1.0), "gsm8k"),
    ]


@pytest.mark.parametrize("full_finetune", [False, True])
def test_tiny_round_loss_falls_and_checkpoint_round_trips(tiny_base, settings, tmp_path, full_finetune):
    torch.set_num_threads(1)
    cfg = DistillConfig(base_model=str(tiny_base), steps=12, batch_size=2, lr=5e-2, warmup_steps=0, log_every=0,
                        full_finetune=full_finetune)
    student = build_student(cfg, settings)
    hist = train(cfg, student, _examples())
    assert len(hist["loss"]) == 12 and hist["steps"] == 12
    # Full batch of the same two examples every step: the loss is deterministic, a clear drop is learning.
    assert sum(hist["loss"][-3:]) / 3 < 0.6 * sum(hist["loss"][:3]) / 3
    assert hist["reasoning"][0] > 0.0  # the GSM8K-style example's step was trained

    path = save_checkpoint(tmp_path / "arc" / "student.safetensors", student, cfg)
    loaded, cfg2 = load_checkpoint(path, settings)
    assert cfg2 == cfg
    b = collate([encode(e, student.tokenizer, 64, 64) for e in _examples()], [e.metrics for e in _examples()],
                student.tokenizer.pad_token_id)
    with torch.no_grad():
        l1, m1 = student(b["input_ids"], b["attention_mask"])
        l2, m2 = loaded(b["input_ids"], b["attention_mask"])
        fresh, _ = build_student(cfg, settings)(b["input_ids"], b["attention_mask"])
    assert torch.allclose(l1, l2, atol=1e-5) and torch.allclose(m1, m2, atol=1e-6)
    assert not torch.allclose(l1, fresh, atol=1e-3)  # the round-trip carried the trained weights


def test_checkpoint_without_config_is_refused(tmp_path, settings):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(TrainingError):
        load_checkpoint(tmp_path / "bad.safetensors", settings)


def test_config_round_trips_and_rejects_unknown_keys():
    cfg = DistillConfig(lora_r=4, lora_targets=("q_proj",))
    assert DistillConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(TrainingError):
        DistillConfig.from_dict({"nope": 1})


def test_encode_marks_prompt_steps_and_answer(tiny_base):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_base)
    ex = _examples()[1]
    e = encode(ex, tok, 256, 256)
    roles = e["role"]
    assert roles[0] == -2 and roles[-1] == -1 and 0 in roles
    answer = [t for t, r in zip(e["input_ids"], roles) if r == -1]
    assert tok.decode(answer[:-1]) == ex.response
    step = [t for t, r in zip(e["input_ids"], roles) if r == 0]
    assert tok.decode(step).strip() == "2 + 3 = 5"
    cut = encode(ex, tok, 256, len(answer))  # no room for steps: the answer survives whole
    assert 0 not in cut["role"] and cut["role"].count(-1) == len(answer)


@pytest.mark.parametrize(
    "text,number",
    [("so $1,000.00 in all", "1000"), ("3 + 4 = 7 eggs.", "7"), ("no digits", None), ("-2.5 degrees", "-2.5")],
)
def test_last_number(text, number):
    assert last_number(text) == number


def test_split_steps_and_arc_prompt():
    assert split_steps("a\n\nb\nc\n") == (("a", "b"), "c")
    assert split_steps("only") == ((), "only")
    p = "Q1?\nA) x\nAnswer:\nB\n\nQ2?\nA) y\nB) z\nAnswer:"
    assert strip_arc_prompt(p) == "Q2?\nA) y\nB) z"


@needs_shared
def test_real_teacher_data(settings):
    arc = arc_examples(settings.data_dir, "train")
    assert len(arc) == 1039 and len(arc_examples(settings.data_dir, "test")) == 445
    assert all(e.response in "ABCD" and "Answer:" not in e.prompt for e in arc[:50])
    assert all(0.0 <= m <= 1.0 for e in arc for m in e.metrics)
    g = gsm8k_examples(settings.data_dir, "train", 20)
    assert g[0].gold == "18" and g[0].steps and "18" in g[0].response
    # Targets come from the teachers, not gold: a question GPT-4 got wrong still has GPT-4's answer as target.
    assert len(gsm8k_examples(settings.data_dir, "test")) == 1319 - 800


@pytest.mark.parametrize(
    "correct,conf,expected",
    [
        ([True, False], [1.0, 0.0], 0.0),  # perfectly calibrated
        ([True, False, True, False], [0.9, 0.9, 0.9, 0.9], 0.4),  # says 0.9, is right half the time
        ([False] * 3, [0.05] * 3, 0.05),
    ],
)
def test_bench_ece(correct, conf, expected):
    from bench.distill import ece

    assert ece(correct, conf) == pytest.approx(expected)


def test_bench_bootstrap_intervals():
    from bench.distill import bootstrap

    same = bootstrap([True] * 10, [True] * 10)
    assert same == {"mean": 0.0, "lo": 0.0, "hi": 0.0}
    mixed = bootstrap([True, False] * 50)
    assert mixed["lo"] < 0.5 < mixed["hi"] and mixed["hi"] - mixed["lo"] < 0.3
    better = bootstrap([True] * 80 + [False] * 20, [False] * 60 + [True] * 40)
    assert better["lo"] > 0.0  # a clear paired gain has an interval above zero


@pytest.mark.parametrize("prompt, letter, want", [
    ("Which is a metal?\nA) wood\nB) iron\nC) glass\nD) paper\nPrint only a single choice", "B", "B) iron"),
    ("Pick one\nA) x y\nB) z\nC) w", "C", "C) w"),
    ("Pick one\nA) x\nB) z", "D", "D"),  # no such option: the bare letter stays
])
def test_spelled_out_writes_the_chosen_option(prompt, letter, want):
    assert spelled_out(letter, arc_options(prompt)) == want


@needs_shared
def test_arc_option_targets_keep_the_teachers_choice(settings):
    bare = arc_examples(settings.data_dir, "train", 50)
    spelled = arc_examples(settings.data_dir, "train", 50, spell_out=True)
    for b, s in zip(bare, spelled):
        assert s.prompt == b.prompt and s.gold == b.gold and s.metrics == b.metrics
        assert s.response.split(")")[0] == b.response  # same letter, now with its option's text


def test_option_scoring_with_the_shared_prompt_cache_matches_full_passes(tiny_base, settings):
    """eval_arc_options reuses the prompt's key/value cache for every option: it must pick what scoring each
    whole sequence from scratch picks."""
    from bench.distill import eval_arc_options
    from selfevolve.distill.lm import chat_ids

    torch.set_num_threads(1)
    student = build_student(DistillConfig(base_model=str(tiny_base), domain="arc"), settings)
    tok = student.tokenizer
    examples = [
        Example("Which is a metal?\nA) wood\nB) iron ore from a mine\nC) glass\nD) paper", "B", (), (1,) * 4, "arc", "B"),
        Example("Which is wet?\nA) water\nB) sand\nC) a dry old stone wall", "A", (), (1,) * 4, "arc", "C"),
    ]
    _, _, extra = eval_arc_options(student, examples)
    want = []
    for ex in examples:
        prompt = chat_ids(tok, ex.prompt)
        scores = {}
        for letter, text in arc_options(ex.prompt).items():
            head = tok(f"{letter})", add_special_tokens=False)["input_ids"]
            body = tok(f" {text}", add_special_tokens=False)["input_ids"]
            ids = torch.tensor([prompt + head + body])
            with torch.no_grad():
                logp = torch.log_softmax(student.lm(input_ids=ids).logits[0].float(), -1)
            start = len(prompt) + len(head)
            scores[letter] = sum(logp[start + k - 1, t].item() for k, t in enumerate(body)) / len(body)
        want.append(max(scores, key=scores.get))
    assert extra["picked"] == {x: want.count(x) for x in "ABCD"}


def test_learning_curve_evaluates_inside_each_round(tiny_base, settings):
    """--curve evaluates at the given epochs of a round, in eval mode, and the round's own result closes it."""
    from bench.distill import run_task

    torch.set_num_threads(1)
    modes = []

    def evaluate(student, examples):
        modes.append(student.training)
        return [True, False], [0.5, 0.5], {}

    cfg = DistillConfig(base_model=str(tiny_base), epochs=2.0, batch_size=1, lr=1e-2, warmup_steps=0, log_every=0)
    res = run_task("t", _examples(), _examples(), cfg, settings, evaluate, curve=(0.5, 1.0))
    assert res["steps_per_epoch"] == 2
    for name in ("response_only", "multi_aspect"):
        points = res["rounds"][name]["curve"]
        assert [(p["epochs"], p["step"]) for p in points] == [(0.5, 1), (1.0, 2), (2.0, 4)]
        assert all(p["accuracy"]["mean"] == 0.5 for p in points)
    assert [(p["epochs"], p["step"]) for p in res["rounds"]["before"]["curve"]] == [(0.0, 0)]
    assert len(modes) == 1 + 2 * 3 and not any(modes), "every evaluation runs with the student in eval mode"
