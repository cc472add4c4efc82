"""Continual learning: EWC and baselines, stage-proportional prioritized replay, drift detection."""
