"""Multi-aspect distillation of small students from teacher outputs (response, reasoning, quality metrics)."""
