"""Whole-volume prediction: tiled fully-convolutional chunks, out of core, resumable, sharded."""
