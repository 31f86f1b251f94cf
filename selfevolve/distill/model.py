"""Student: a causal LM (LoRA adapter per domain, or fully fine-tuned) plus a quality-metric head. No I/O."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from selfevolve.distill.config import DistillConfig

METRICS = ("relevance", "correctness", "completeness", "clarity")


class MetricHead(nn.Module):
    """Predicts the scorer's four quality metrics in [0, 1] from a pooled hidden state."""

    def __init__(self, n_embd: int, hidden: int, n_metrics: int = len(METRICS)) -> None:
        super().__init__()
        self.fc = nn.Linear(n_embd, hidden)
        self.act = nn.GELU()
        self.proj = nn.Linear(hidden, n_metrics)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.proj(self.act(self.fc(pooled))))


def _top_layers(lm: nn.Module, n: int) -> list[int] | None:
    total = lm.config.num_hidden_layers
    return None if n <= 0 or n >= total else list(range(total - n, total))


class Student(nn.Module):
    """Causal LM + metric head; forward returns next-token logits and predicted quality metrics."""

    def __init__(self, lm: nn.Module, cfg: DistillConfig) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.full_finetune:
            self.lm = lm
        else:
            from peft import LoraConfig, get_peft_model

            lora = LoraConfig(
                r=cfg.lora_r,
                lora_alpha=cfg.lora_alpha,
                lora_dropout=cfg.lora_dropout,
                target_modules=list(cfg.lora_targets),
                layers_to_transform=_top_layers(lm, cfg.lora_layers),
                task_type="CAUSAL_LM",
            )
            # One named adapter per domain, so several domains' students can share one frozen base later.
            self.lm = get_peft_model(lm, lora, adapter_name=cfg.domain)
        n_embd = lm.config.hidden_size
        self.metric_head = MetricHead(n_embd, cfg.metric_hidden)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, T, V), or (B, len(keep), V) at the sequence positions in keep, and metrics (B, 4).
        keep matters on CPU: the 49k-vocabulary head costs a third of a step when applied everywhere."""
        extra = {} if keep is None else {"logits_to_keep": keep}
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, **extra)
        h = out.hidden_states[-1]
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        # Mean over real tokens: the metric is about the whole exchange, not only its last token.
        pooled = (h * m).sum(1) / m.sum(1).clamp_min(1.0)
        return out.logits, self.metric_head(pooled)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Only the tensors training changes: LoRA weights and metric head (everything when full fine-tuning)."""
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        return {n: t.detach().contiguous() for n, t in self.state_dict().items() if n in names}


def confidence(metrics: torch.Tensor, weights: tuple[float, ...] | Any) -> torch.Tensor:
    """Serving-time confidence: the scorer's weighted mean of the predicted metrics (rows sum to [0, 1])."""
    w = torch.as_tensor(weights, dtype=metrics.dtype)
    return (metrics * w).sum(-1) / w.sum()
