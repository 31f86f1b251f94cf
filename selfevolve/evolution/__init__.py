"""Evolution: statistics, promotion, the hierarchy, gaps, spawning and meta-learning of thresholds."""
