import sys

from mini_llm.cli import main

sys.exit(main(["bench", *sys.argv[1:]]))
