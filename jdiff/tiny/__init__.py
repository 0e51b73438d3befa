"""The embedded default model's world: a procedural shapes dataset, its tokenizers, and training losses.

Used by `examples/train_tiny.py` to reproduce the shipped model and by the tests that judge it.
"""
