"""Pure distillation losses: response (token KL or sequence CE), reasoning (per-step CE), metric (MSE), total."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(values.dtype)
    # An empty mask gives 0 (still attached to the graph), so a batch without that aspect adds nothing.
    return (values * m).sum() / m.sum().clamp_min(1.0)


def token_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy, shape (B, T), for already-shifted logits (B, T, V) and targets (B, T)."""
    return F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")


def token_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per-token KL(teacher || student) at a temperature, scaled by T^2 (Hinton et al. 2015), shape (B, T)."""
    t = temperature
    s = F.log_softmax(student_logits.float() / t, dim=-1)
    p = F.log_softmax(teacher_logits.float() / t, dim=-1)
    return (p.exp() * (p - s)).sum(-1) * (t * t)


def response_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    teacher_logits: torch.Tensor | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Distillation on the answer tokens: token-level KL when teacher logits exist, else sequence-level CE
    on the teacher's answer text (Kim & Rush 2016)."""
    if teacher_logits is not None:
        return _masked_mean(token_kl(logits, teacher_logits, temperature), mask)
    return _masked_mean(token_ce(logits, targets), mask)


def reasoning_loss(logits: torch.Tensor, targets: torch.Tensor, step_ids: torch.Tensor) -> torch.Tensor:
    """CE on the teacher's intermediate steps. step_ids (B, T) numbers each token's step (>= 0) or is -1.
    Each step's mean CE counts once, so a long step does not drown the short ones."""
    ce = token_ce(logits, targets)
    valid = step_ids >= 0
    if not bool(valid.any()):
        return ce.sum() * 0.0
    n_steps = int(step_ids.max()) + 1
    # One segment per (row, step): flatten to a single index and average with index_add.
    seg = (torch.arange(ce.shape[0], device=ce.device).unsqueeze(1) * n_steps + step_ids.clamp_min(0))[valid]
    sums = torch.zeros(ce.shape[0] * n_steps, dtype=ce.dtype, device=ce.device).index_add(0, seg, ce[valid])
    counts = torch.zeros_like(sums).index_add(0, seg, torch.ones_like(ce[valid]))
    present = counts > 0
    return (sums[present] / counts[present]).mean()


def metric_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE between predicted and scored quality metrics, both (B, 4) in [0, 1]."""
    return F.mse_loss(predicted.float(), target.float())


def total_loss(
    l_response: torch.Tensor,
    l_reasoning: torch.Tensor,
    l_metric: torch.Tensor,
    lambda_r: float = 0.4,
    lambda_rs: float = 0.4,
    lambda_m: float = 0.2,
) -> torch.Tensor:
    """The paper's weighted sum L = λ_r L_response + λ_rs L_reasoning + λ_m L_metric."""
    return lambda_r * l_response + lambda_rs * l_reasoning + lambda_m * l_metric
