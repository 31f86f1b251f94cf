"""Worker processes: model inference and distillation training."""
