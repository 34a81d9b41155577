"""Starting the ranks.

`mini-llm train --nproc-per-node N --parallel NAME ...` re-executes itself through torch's own
launcher (torch.distributed.run, what the `torchrun` command runs) as
`python -m mini_llm train --parallel NAME ...` on N local ranks. On several machines, run
torchrun yourself on each (the same code path):

    torchrun --nnodes 2 --node-rank 0 --nproc-per-node 8 --rdzv-backend c10d \\
        --rdzv-endpoint HOST:29500 -m mini_llm train --parallel fsdp ...

`spawn` starts ranks of a Python function on this machine, for the tests and the benchmark.
"""

import os
import signal
import time

import torch
import torch.multiprocessing as mp

from ..errors import ConfigError
from .groups import free_port, port_in_use


def relaunch(argv, nproc, master_port=None):
    """Run `mini-llm <argv>` on `nproc` local ranks through torch.distributed.run; returns the
    exit status. A rank that fails stops the others (torchrun's policy) and is named in one line."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    if nproc < 1:
        raise ConfigError(f"--nproc-per-node must be >= 1, got {nproc}")
    if master_port is not None and port_in_use(master_port):
        raise ConfigError(f"port {master_port} is in use: pick another --master-port, or leave it out")
    port = master_port or free_port()
    launcher = get_args_parser().parse_args([
        "--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1", "--master-port", str(port),
        "--max-restarts", "0", "--module", "mini_llm", *argv])
    try:
        run(launcher)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        raise ConfigError(f"rank {rank} failed: {describe(failure)}; the other ranks were stopped") from None
    return 0


def describe(failure):
    code = failure.exitcode
    if code < 0:
        return f"killed by signal {signal.Signals(-code).name}"
    return f"exit code {code} (its own error is printed above)"


def strip_launcher_flags(argv):
    """argv without --nproc-per-node N and --master-port P (either form, --flag=V too)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--nproc-per-node", "--master-port"):
            skip = True
        elif not arg.startswith(("--nproc-per-node=", "--master-port=")):
            out.append(arg)
    return out


def spawn(fn, nproc, *args, timeout_s=60):
    """fn(rank, nproc, *args) on `nproc` fresh processes, with torchrun's environment
    variables set; fails, rather than hangs, if a rank has not returned after timeout_s."""
    port = free_port()
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(nproc),
           "MINI_LLM_DIST_TIMEOUT": str(timeout_s), "OMP_NUM_THREADS": "1"}  # as torchrun sets it
    context = mp.start_processes(_with_env, args=(fn, env, args), nprocs=nproc, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=max(0.1, deadline - time.monotonic())):
        if time.monotonic() > deadline:
            for p in context.processes:
                p.kill()
            raise TimeoutError(f"ranks still running after {timeout_s} s")


def _with_env(rank, fn, env, args):
    os.environ.update(env, RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)  # torch read OMP_NUM_THREADS before the variable was set here
    fn(rank, int(env["WORLD_SIZE"]), *args)
