"""Side-by-side benchmark, jdiff vs diffusers: `python benchmarks/compare.py --compare diffusers` (= `jdiff bench
--compare diffusers`). The implementation is the jdiff/bench/ package."""

import sys

from jdiff.bench import main

sys.exit(main())
