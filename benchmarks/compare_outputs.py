"""Relative L2 difference of saved outputs against the first: `python benchmarks/compare_outputs.py a.npy b.npy ...`"""

import sys

import numpy as np

ref = np.load(sys.argv[1]).astype(np.float64)
for path in sys.argv[2:]:
    out = np.load(path).astype(np.float64)
    print(f"{path}: rel L2 vs {sys.argv[1]} = {np.linalg.norm(out - ref) / np.linalg.norm(ref):.3e}")
