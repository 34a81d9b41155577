"""python -m mini_llm.cli: the mini-llm command."""

import sys

from . import main

sys.exit(main())
