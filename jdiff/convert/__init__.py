"""Weight conversion: declarative plans from reference (PyTorch) state dicts to jdiff parameter trees.

`plan.py` is the engine (rules, transforms, resolution with collected errors); each model family's plan sits
beside it (`flux.py`, `clip.py`, `t5.py`, `autoencoder_kl.py`); `checkpoint.py` writes and reads jdiff's own
orbax checkpoints.
"""
