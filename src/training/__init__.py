"""Training support: callbacks, experiment tracking, sweeps and run comparison."""
