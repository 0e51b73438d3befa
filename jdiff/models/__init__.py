"""Model families, one folder each: `config.py` (reference config.json keys) and the NNX module(s)."""
