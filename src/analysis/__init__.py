"""Metrics, baselines, morphology, particles, transport and evolution statistics."""
