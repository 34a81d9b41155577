"""Timing: device events on a GPU, torch.utils.benchmark on a CPU; always the median."""

import statistics
import time

import torch
import torch.utils.benchmark


def median_ms(fn, device):
    """Median milliseconds of fn() after warm-up.

    CUDA: triton.testing.do_bench times with CUDA events and clears the L2 cache before every
    run, so a kernel never reads its inputs from a cache the previous run warmed. CPU:
    torch.utils.benchmark repeats fn in blocks, in three windows of at least 0.07 s, and takes
    the median block of all three: on a shared virtual machine one window can be several times
    slower throughout (seen here: 180 ms against 26 ms for the same op), and a single window
    would then decide the result.
    """
    if device.type == "cuda":
        from triton.testing import do_bench

        return do_bench(fn, warmup=25, rep=100, return_mode="median")
    timer = torch.utils.benchmark.Timer(stmt="fn()", globals={"fn": fn},
                                        num_threads=torch.get_num_threads())
    blocks = [t for _ in range(3) for t in timer.blocked_autorange(min_run_time=0.07).times]
    return statistics.median(blocks) * 1e3


def plain_ms(fn, device, repeats=10):
    """Mean milliseconds of fn() by wall clock around a synchronised loop, after one warm-up
    call: for whole steps (a training step, a generation) that repeat as they are, and as a
    cross-check that the careful timer measures what a user timing by hand would see."""
    fn()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - t0) * 1e3 / repeats
