"""DistillConfig: every knob of one distillation round, saved inside the checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from selfevolve.errors import TrainingError


@dataclass
class DistillConfig:
    # Base model: a local transformers dir, or None for the cached SmolLM2-135M-Instruct conversion.
    base_model: str | None = None
    domain: str = "default"
    # LoRA (ignored when full_finetune).
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj")
    lora_layers: int = 8  # adapt only the top N blocks (0 = all): backward then stops there, ~2x faster on CPU
    full_finetune: bool = False
    # Metric head: pooled hidden state -> hidden -> 4 quality metrics.
    metric_hidden: int = 64
    # Optimisation.
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    steps: int = 100  # optimizer steps; overridden by epochs when epochs > 0
    epochs: float = 0.0
    batch_size: int = 8
    warmup_steps: int = 5
    # Truncation: prompts keep their tail (the question), answers their head (steps come first).
    max_prompt_tokens: int = 256
    max_answer_tokens: int = 192
    # The paper's loss weights (Section 4).
    lambda_r: float = 0.4
    lambda_rs: float = 0.4
    lambda_m: float = 0.2
    kl_temperature: float = 1.0
    seed: int = 0
    log_every: int = 10

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["lora_targets"] = list(self.lora_targets)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DistillConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise TrainingError(f"unknown DistillConfig keys in checkpoint: {sorted(unknown)}")
        d = dict(d)
        if "lora_targets" in d:
            d["lora_targets"] = tuple(d["lora_targets"])
        return cls(**d)

    def total_steps(self, n_examples: int) -> int:
        """Optimizer steps for a round over n_examples."""
        if self.epochs > 0:
            return max(1, round(self.epochs * -(-n_examples // self.batch_size)))
        return self.steps
