"""Reads ptxas's -v report (written by nvcc -Xptxas -v, kept by the build in ptxas.txt) into one
row per kernel and arch: registers, spills, shared memory, stack. Spills (local-memory traffic
where registers ran out) and register counts that cap occupancy are what to look at first.

    python -m mini_llm.ops.cuda            # builds, then prints the table
"""

import re
import shutil
import subprocess
from dataclasses import dataclass

_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\w+)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


@dataclass
class KernelResources:
    name: str  # mangled, as ptxas prints it
    arch: str  # "sm_80", "sm_90a"
    registers: int = 0
    spill_stores: int = 0  # bytes
    spill_loads: int = 0  # bytes
    stack: int = 0  # bytes of stack frame per thread
    smem: int = 0  # bytes of static shared memory per block

    @property
    def spills(self):
        return self.spill_stores + self.spill_loads > 0


def parse(text):
    """ptxas -v text -> [KernelResources], one per entry function (kernel) and arch, in order.
    Non-inlined device functions ("Function properties" without an entry) are not listed."""
    rows, current = [], None
    for line in text.splitlines():
        if m := _ENTRY.search(line):
            current = KernelResources(m.group(1), m.group(2))
            rows.append(current)
        elif current is None:
            continue
        elif m := _FRAME.search(line):
            current.stack, current.spill_stores, current.spill_loads = map(int, m.groups())
        elif m := _USED.search(line):
            current.registers = int(m.group(1))
            current.smem = int(s.group(1)) if (s := _SMEM.search(line)) else 0
            current = None  # the "Used" line closes an entry's block
    return rows


def demangle(names):
    """Readable C++ names through c++filt when it is installed; the mangled names otherwise."""
    names = list(names)
    if not names or shutil.which("c++filt") is None:
        return names
    done = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True)
    readable = done.stdout.splitlines()
    return readable if done.returncode == 0 and len(readable) == len(names) else names


def short_name(demangled):
    """`void ns::(anonymous namespace)::kernel<float, 4>(ns::Args<float>)` -> `kernel<float, 4>`:
    no return type, namespaces or parameter list (the template arguments tell instances apart)."""
    name = demangled.removeprefix("void ")
    if name.endswith(")"):  # cut the parameter list: the last balanced (...) group
        depth = 0
        for i in range(len(name) - 1, -1, -1):
            depth += {")": 1, "(": -1}.get(name[i], 0)
            if depth == 0:
                name = name[:i]
                break
    return re.sub(r"\b[A-Za-z_]\w*::", "", name.replace("(anonymous namespace)::", ""))


def table(rows):
    """A fixed-width text table of the rows (kernels demangled and shortened), sorted by kernel."""
    names = [short_name(n) for n in demangle(r.name for r in rows)]
    names, rows = zip(*sorted(zip(names, rows), key=lambda pair: (pair[0], pair[1].arch))) if rows else ((), ())
    header = ("kernel", "arch", "regs", "spill st", "spill ld", "stack", "smem")
    body = [(n, r.arch, str(r.registers), str(r.spill_stores), str(r.spill_loads), str(r.stack),
             str(r.smem)) for n, r in zip(names, rows)]
    widths = [max(len(row[i]) for row in (header, *body)) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in (header, *body)]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
