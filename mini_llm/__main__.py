"""`python -m mini_llm ...` is the `mini-llm` command: what torchrun runs on each rank."""

import sys

from .cli import main

sys.exit(main())
