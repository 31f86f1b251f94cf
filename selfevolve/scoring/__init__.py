"""Scoring without gold: the arbiter's per-query fold, no-gold scores, checks in a sandbox, calibration."""
