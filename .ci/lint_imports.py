"""lint-imports (import-linter) on the package laid out as the install names it.

pyproject.toml installs two top-level folders under other import names (package-dir: kernels/ is
mini_llm.kernels, bench/ is mini_llm.bench). grimp, which builds import-linter's graph, finds a
package's modules by walking its folder, so plain `lint-imports` would not see those two and
would silently drop every import of them: an upward import into the bench would pass. This copies
the .py files into a temporary tree where each folder sits at its import path and runs
lint-imports there, with the contracts of the repository's pyproject.toml.

    python .ci/lint_imports.py [lint-imports options, e.g. --verbose]
"""

import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "pyproject.toml"
# import-linter's own command; run in a fresh interpreter so that `mini_llm` resolves to the copy
LINT_IMPORTS = "from importlinter.cli import lint_imports_command; lint_imports_command()"


def _not_source(folder, names):
    return [n for n in names if n == "__pycache__" or not (n.endswith(".py") or Path(folder, n).is_dir())]


def lay_out(root):
    """Copy mini_llm/ and every folder of package-dir into `root`, each at its import path."""
    package_dir = tomllib.loads(CONFIG.read_text())["tool"]["setuptools"]["package-dir"]
    for package, folder in {"mini_llm": "mini_llm", **package_dir}.items():
        shutil.copytree(REPO / folder, root / package.replace(".", "/"), ignore=_not_source, dirs_exist_ok=True)


def lint(root, options=()):
    """lint-imports run in `root` (it puts its working directory first on sys.path); returns
    (exit status, its report)."""
    done = subprocess.run([sys.executable, "-c", LINT_IMPORTS, str(CONFIG), "--no-cache", *options],
                          cwd=root, capture_output=True, text=True)
    return done.returncode, done.stdout + done.stderr


def main(options):
    with tempfile.TemporaryDirectory() as tmp:
        lay_out(Path(tmp))
        status, report = lint(Path(tmp), options)
    print(report, end="")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
