"""Distillation losses: hand-computed tables and Hypothesis properties."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from selfevolve.distill.losses import (
    metric_loss,
    reasoning_loss,
    response_loss,
    token_ce,
    token_kl,
    total_loss,
)


def _logits(rows):
    return torch.tensor(rows, dtype=torch.float32).unsqueeze(0)  # (1, T, V)


@pytest.mark.parametrize(
    "row,target,expected",
    [
        ([0.0, 0.0], 0, math.log(2)),
        ([math.log(3), 0.0], 0, math.log(4 / 3)),
        ([0.0, 0.0, 0.0, 0.0], 3, math.log(4)),
    ],
)
def test_token_ce_is_negative_log_probability(row, target, expected):
    ce = token_ce(_logits([row]), torch.tensor([[target]]))
    assert ce.item() == pytest.approx(expected, rel=1e-5)


def test_response_ce_ignores_unmasked_positions():
    targets = torch.tensor([[0, 1]])
    mask = torch.tensor([[True, False]])
    a = response_loss(_logits([[2.0, 0.0], [0.0, 0.0]]), targets, mask)
    b = response_loss(_logits([[2.0, 0.0], [-9.0, 9.0]]), targets, mask)
    assert a.item() == pytest.approx(b.item())
    assert a.item() == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-5)


def test_response_uses_kl_when_teacher_logits_given():
    s = _logits([[0.0, 0.0]])
    t = _logits([[math.log(3), 0.0]])  # teacher p = (3/4, 1/4)
    kl = response_loss(s, torch.tensor([[0]]), torch.tensor([[True]]), teacher_logits=t)
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert kl.item() == pytest.approx(expected, rel=1e-5)


def test_reasoning_weighs_each_step_once():
    # Step 0: one token with CE log 2; step 1: three tokens with CE log 4. Per-step mean: (log2 + log4) / 2.
    logits = _logits([[0.0, 0.0, -1e4, -1e4]] + [[0.0, 0.0, 0.0, 0.0]] * 3)
    targets = torch.tensor([[0, 1, 2, 3]])
    steps = torch.tensor([[0, 1, 1, 1]])
    assert reasoning_loss(logits, targets, steps).item() == pytest.approx((math.log(2) + math.log(4)) / 2, rel=1e-4)


def test_reasoning_is_zero_without_steps_and_keeps_the_graph():
    logits = _logits([[1.0, 2.0]]).requires_grad_()
    loss = reasoning_loss(logits, torch.tensor([[0]]), torch.tensor([[-1]]))
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None and float(logits.grad.abs().sum()) == 0.0


def test_reasoning_separates_rows():
    # Same step index in two rows are two steps, not one.
    logits = torch.zeros(2, 2, 2)
    logits[1, :, 0] = 5.0
    targets = torch.tensor([[0, 0], [1, 1]])
    steps = torch.tensor([[0, -1], [0, 0]])
    ce0, ce1 = math.log(2), float(-torch.log_softmax(torch.tensor([5.0, 0.0]), 0)[1])
    assert reasoning_loss(logits, targets, steps).item() == pytest.approx((ce0 + ce1) / 2, rel=1e-5)


@pytest.mark.parametrize(
    "lr,lrs,lm,expected",
    [(0.4, 0.4, 0.2, 0.4 * 1 + 0.4 * 2 + 0.2 * 3), (1.0, 0.0, 0.0, 1.0), (0.0, 0.0, 1.0, 3.0)],
)
def test_total_loss_weights(lr, lrs, lm, expected):
    t = total_loss(torch.tensor(1.0), torch.tensor(2.0), torch.tensor(3.0), lr, lrs, lm)
    assert t.item() == pytest.approx(expected)


def test_metric_loss_is_mse():
    p = torch.tensor([[0.5, 1.0, 0.0, 0.25]])
    t = torch.tensor([[0.0, 1.0, 0.0, 0.75]])
    assert metric_loss(p, t).item() == pytest.approx((0.25 + 0.25) / 4)


logit_rows = st.lists(st.lists(st.floats(-20, 20), min_size=3, max_size=3), min_size=1, max_size=4)


@settings(max_examples=60, deadline=None)
@given(logit_rows, logit_rows)
def test_kl_is_nonnegative_and_zero_on_itself(a, b):
    n = min(len(a), len(b))
    s, t = _logits(a[:n]), _logits(b[:n])
    assert float(token_kl(s, t).min()) >= -1e-5
    assert float(token_kl(s, s).abs().max()) <= 1e-5


@settings(max_examples=60, deadline=None)
@given(logit_rows, st.data())
def test_ce_is_nonnegative_and_one_step_reasoning_equals_response(rows, data):
    logits = _logits(rows)
    T = logits.shape[1]
    targets = torch.tensor([data.draw(st.lists(st.integers(0, 2), min_size=T, max_size=T))])
    mask = torch.ones(1, T, dtype=torch.bool)
    r = response_loss(logits, targets, mask)
    assert r.item() >= 0.0
    assert reasoning_loss(logits, targets, torch.zeros(1, T, dtype=torch.long)).item() == pytest.approx(r.item(), rel=1e-5, abs=1e-6)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=4, max_size=4), st.lists(st.floats(0, 1), min_size=4, max_size=4))
def test_metric_loss_zero_only_when_equal(a, b):
    p, t = torch.tensor([a]), torch.tensor([b])
    assert metric_loss(p, p).item() == 0.0
    if float((p - t).abs().max()) > 1e-6:  # below that the square underflows float32
        assert metric_loss(p, t).item() > 0.0
