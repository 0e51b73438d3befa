import sys

from jdiff.cli import main

sys.exit(main())
