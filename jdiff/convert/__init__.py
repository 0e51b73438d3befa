"""`jdiff convert`: a diffusers-format directory -> a jdiff checkpoint (`run.py`).

The conversion engine itself (plans, transforms, safetensors and orbax I/O, component loading) is
`jdiff.weights`; each model family's plan sits beside its modules (`jdiff/models/<family>/plan.py`).
"""
