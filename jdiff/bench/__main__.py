"""`python -m jdiff.bench ...` = `jdiff bench ...` (the driver starts its workers this way)."""

import sys

from jdiff.bench.driver import main

sys.exit(main())
