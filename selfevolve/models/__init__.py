"""The model catalogue, fallback chains, and one backend call with failures as data."""
