"""Compile every Triton kernel of mini_llm ahead of time for one GPU arch, without a GPU.

    python -m mini_llm.bench.triton_aot_check [--arch 90] [--dtypes bf16,fp16,fp32]
                                              [--only norm,attn,decode,quant] [--jobs 8]

For each kernel and each configuration it is launched with (dtypes, head dims, constexpr
flags, every autotune config), it runs Triton's full pipeline (TTIR -> TTGIR -> LLVM -> PTX ->
ptxas for sm_<arch>) and prints registers per thread, spilled bytes (stores/loads) and static
shared memory, or the error. A failure here is what the first launch on that GPU would raise.
Works with Triton 3.6 and 3.9 (same ASTSource / GPUTarget API). Pointers, strides and the
sizes in ALIGNED_SIZES are compiled as divisible by 16, as typical launches make them; sizes
that are often 1 at run time (one token, one query) are also compiled as the constexpr 1 that
Triton's specialization makes of them. Not covered: the launch itself (driver, launcher
stub), and OutOfResources, which is only flagged ("> smem limit"). About 630 compiles, ~8 min
on one core: use --jobs on a bigger machine.
"""
import argparse
import contextlib
import io
import multiprocessing
import os
import re
import tempfile
import time
import traceback

os.environ["TRITON_INTERPRET"] = "0"  # the kernel modules pick their real (GPU) configs at import
os.environ.setdefault("TRITON_CACHE_DIR", tempfile.mkdtemp(prefix="triton_aot_"))
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # 3.9 warns when unset; 3.6's default

import torch  # noqa: E402
import triton  # noqa: E402
from triton import knobs  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.autotuner import Autotuner  # noqa: E402

from mini_llm.kernels import attention as fa  # noqa: E402
from mini_llm.kernels import attention_bwd as fb  # noqa: E402
from mini_llm.kernels import common  # noqa: E402
from mini_llm.kernels import decode_attention as da  # noqa: E402
from mini_llm.kernels import layer_norm as ln  # noqa: E402
from mini_llm.kernels import quant_matmul as qm  # noqa: E402

# Sizes that a model's shapes make multiples of 16, compiled as such (like pointers and strides).
ALIGNED_SIZES = ("C", "N", "K")
# Shared memory one block may use (opt-in maximum), bytes: a config over it compiles but fails
# to launch (OutOfResources; the autotuner then skips it).
SMEM_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448}
TORCH_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def launch(name, config, fn, types, consts, num_warps, num_stages=3):
    """One compile job. types: Triton type of each non-constexpr arg ("*bf16", "fp32"; default
    "i32"); consts: constexpr args (None for an absent optional pointer)."""
    return dict(name=name, config=config, fn=fn.fn if isinstance(fn, Autotuner) else fn,
                types=types, consts=consts, num_warps=num_warps, num_stages=num_stages)


def tuned(name, fn, configs, extra, types, consts):
    """One launch per autotune config (triton.Config) of fn."""
    for c in configs:
        label = "x".join(f"{v}" for v in c.kwargs.values()) + f" w{c.num_warps} s{c.num_stages}"
        yield launch(name, f"{extra} {label}", fn, types, {**consts, **c.kwargs},
                     c.num_warps, c.num_stages)


def norm_launches(dtypes):
    """layer_norm.py: LayerNorm (bias) / RMSNorm, plain and fused (the model's fused form: x
    fp32 residual + bf16 delta), for a few row widths (BLOCK_C, ROWS, warps from _tile), and
    the forward on a single row (decoding one token: n_rows is then a constexpr 1)."""
    cases = [(d, d, rms, False) for d in dtypes for rms in (False, True)]
    cases += [("fp32", "bf16", rms, True) for rms in (False, True)]
    for x, delta, rms, fused in cases:
        for C, n_rows in ((256, 1 << 20), (1024, 1 << 20), (1024, 1), (4096, 1 << 20), (16384, 1 << 20)):
            rows, block_c, warps = ln._tile(n_rows, C)
            flags = dict(ROWS=rows, BLOCK_C=block_c, IS_RMS=rms, HAS_BIAS=not rms,
                         **({"n_rows": 1} if n_rows == 1 else {}))
            label = (f"{'add_' if fused else ''}{'rms' if rms else 'ln'} x={x}"
                     f"{' delta=' + delta if fused else ''} C={C}{' rows=1' if n_rows == 1 else ''}")
            fwd = dict(X=f"*{x}", DELTA=f"*{delta}", S=f"*{x}", Y=f"*{x}", W=f"*{x}", B=f"*{x}",
                       MEAN="*fp32", RSTD="*fp32", eps="fp32")
            absent = dict(B=None, MEAN=None) if rms else {}  # optional pointers passed as None
            absent.update({} if fused else dict(DELTA=None, S=None))
            yield launch("norm_fwd", label, ln._norm_fwd_kernel, fwd,
                         {**flags, "HAS_DELTA": fused, **absent}, warps)
            if n_rows == 1:
                continue
            bwd = dict(DY=f"*{x}", DS=f"*{x}", XS=f"*{x}", W=f"*{x}", MEAN="*fp32", RSTD="*fp32",
                       DX=f"*{x}", DDELTA=f"*{delta}", DW_PARTIAL="*fp32", DB_PARTIAL="*fp32")
            absent = dict(DB_PARTIAL=None, MEAN=None) if rms else {}
            absent.update({} if fused else dict(DS=None, DDELTA=None))
            yield launch("norm_bwd", label, ln._norm_bwd_kernel, bwd,
                         {**flags, "HAS_DS": fused, "HAS_DDELTA": fused, **absent}, warps)


def attention_launches(dtypes):
    """attention.py / attention_bwd.py: every autotune config per (dtype, head dim), causal."""
    for d in dtypes:
        prec = common.dot_precision(TORCH_DTYPE[d])
        io_types = {n: f"*{d}" for n in ("Q", "K", "V", "O", "DO", "DQ", "DK", "DV")}
        types = dict(io_types, LSE="*fp32", DELTA="*fp32", qk_scale="fp32", scale="fp32")
        for hs in sorted({hs for _, hs in fb.DQ_KERNELS}):
            consts = dict(HEAD_DIM=hs, CAUSAL=True, DOT_PRECISION=prec)
            for name, kernels in (("attn_fwd", fa.FWD_KERNELS), ("attn_dkdv", fb.DKDV_KERNELS),
                                  ("attn_dq", fb.DQ_KERNELS)):
                tuner = kernels[prec, hs]
                yield from tuned(name, tuner, tuner.configs, f"{d} hs{hs}", types, consts)
                # non-causal: the same loops without the diagonal; its first config suffices
                yield from tuned(name, tuner, tuner.configs[:1], f"{d} hs{hs} noncausal", types,
                                 dict(consts, CAUSAL=False))
            yield launch("attn_delta", f"{d} hs{hs} {fb.DELTA_BLOCK_M}", fb._delta_kernel, types,
                         dict(HEAD_DIM=hs, BLOCK_M=fb.DELTA_BLOCK_M), 4)


def decode_launches(dtypes):
    """decode_attention.py: the split kernel per (dtype, head dim, q-tile rows, one split or
    several) and the combine kernel; also with t_q = group = 1 (one query per sequence, one
    head per kv head: the commonest decode step, where Triton makes those constexpr 1s)."""
    for d in dtypes:
        tile = da.tiles(TORCH_DTYPE[d])
        types = dict(q_ptr=f"*{d}", k_ptr=f"*{d}", v_ptr=f"*{d}", lens_ptr="*i32", out_ptr=f"*{d}",
                     o_part_ptr="*fp32", lse_part_ptr="*fp32", qk_scale="fp32")
        flags = dict(BLOCK_N=tile.block_n, DOT_PRECISION=common.dot_precision(TORCH_DTYPE[d]))
        for hs in (32, 64, 128):
            for block_m, ones in [(m, {}) for m in sorted({16, min(32, tile.max_block_m), tile.max_block_m})] + \
                    [(16, dict(t_q=1, group=1))]:
                for single in (False, True):
                    consts = dict(flags, HS=hs, BLOCK_M=block_m, SINGLE_SPLIT=single, **ones,
                                  **(dict(num_splits=1) if single and ones else {}))
                    label = f"{d} hs{hs} {block_m}x{tile.block_n} single={single}{' t_q=group=1' * bool(ones)}"
                    yield launch("decode_split", label, da._decode_split_kernel, types, consts,
                                 4 if block_m <= 32 else 8, tile.num_stages)
            for ones in ({}, dict(t_q=1)):
                yield launch("decode_combine", f"{d} hs{hs}{' t_q=1' * bool(ones)}", da._decode_combine_kernel,
                             types, dict(HS=hs, BLOCK_D=32, BLOCK_S=da.COMBINE_SPLITS, **ones), 2)


def quant_launches(dtypes):
    """quant_matmul.py, for int8 and int4 (groups 32, 64, 128), each autotune config that _fits
    keeps: the GEMV shape with M = 1 (a constexpr 1 to Triton), M = 2 (both on the CUDA cores)
    and M <= 16 (a 16-row tensor-core tile), the first config again with split K (fp32 atomic
    adds), and the tiled shape (M > 16)."""
    one_row = dict(BLOCK_M=1, GROUP_M=1, M=1, M_BUCKET=1)
    shapes = [("gemv", qm._gemv, "M1", one_row, 1, None), ("gemv", qm._gemv, "M1", one_row, 4, 1),
              ("gemv", qm._gemv, "M2", dict(BLOCK_M=2, GROUP_M=1), 1, None),
              ("gemv", qm._gemv, "M16", dict(BLOCK_M=16, GROUP_M=1), 1, None),
              ("gemm", qm._gemm, "M>16", dict(GROUP_M=8), 1, None)]
    for d in dtypes:
        prec = common.dot_precision(TORCH_DTYPE[d])
        for bits, group in ((8, 0), (4, 32), (4, 64), (4, 128)):
            types = dict(x_ptr=f"*{d}", qw_ptr="*i8" if bits == 8 else "*u8", scales_ptr="*fp16",
                         out_ptr=f"*{d}")
            for shape, tuner, rows, fixed, split, n_configs in shapes:
                consts = dict(fixed, BITS=bits, GROUP=group, SPLIT_K=split, DOT_PRECISION=prec)
                label = f"{d} int{bits}{f' g{group}' if bits == 4 else ''} {rows} split{split}"
                out = dict(types, out_ptr="*fp32") if split > 1 else types
                configs = qm._fits(tuner.configs, consts)[:n_configs]
                yield from tuned(f"quant_{shape}", tuner, configs, label, out, consts)


GROUPS = {"norm": norm_launches, "attn": attention_launches, "decode": decode_launches,
          "quant": quant_launches}


def compile_one(job, arch):
    """(registers, spill stores, spill loads, shared bytes, seconds) from Triton + ptxas -v."""
    fn = job["fn"]
    consts = job["consts"]
    sig = {n: "constexpr" if n in consts else job["types"].get(n, "i32") for n in fn.arg_names}
    aligned = [i for i, n in enumerate(fn.arg_names)
               if sig[n].startswith("*") or n.startswith("stride") or n in ALIGNED_SIZES]
    src = ASTSource(fn, sig, constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()},
                    attrs={(i,): [["tt.divisibility", 16]] for i in aligned})
    log = io.StringIO()
    start = time.time()
    with contextlib.redirect_stdout(log):  # ptxas -v output is printed by the NVIDIA backend
        kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                                options=dict(num_warps=job["num_warps"], num_stages=job["num_stages"]))
    text = log.getvalue()
    regs = re.search(r"Used (\d+) registers", text)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    return (int(regs.group(1)) if regs else -1, *(map(int, spills.groups()) if spills else (-1, -1)),
            kernel.metadata.shared, time.time() - start)


def run_one(task):
    """One table row; in a worker process when --jobs > 1 (jobs are rebuilt there by index)."""
    group, index, dtypes, arch, full_traceback = task
    job = list(GROUPS[group](dtypes))[index]
    head = f"{job['name']:<15} {job['config']:<50}"
    try:
        regs, stores, loads, smem, secs = compile_one(job, arch)
    except Exception as e:  # report and go on: the table is the point
        if full_traceback:
            return False, f"{head} FAILED\n{traceback.format_exc()}"
        while e.__cause__ is not None:  # Triton nests errors, one per call level of the source
            e = e.__cause__
        return False, f"{head} FAILED {type(e).__name__}: {' '.join(str(e).split())[:300]}"
    over = "  > smem limit: cannot launch" if smem > SMEM_LIMIT.get(arch, 1 << 30) else ""
    return True, f"{head} regs {regs:>3}  spill {stores:>5}/{loads:<5} smem {smem:>6}{over}  ({secs:.1f}s)"


def init_worker():
    """Ask the NVIDIA backend for ptxas -v's report, on every compile (no cache hits)."""
    knobs.nvidia.dump_ptxas_log = True
    knobs.compilation.always_compile = True


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability: 90 (H100), 80 (A100)")
    parser.add_argument("--dtypes", default="bf16,fp16,fp32")
    parser.add_argument("--only", default=",".join(GROUPS), help="kernel groups: " + ", ".join(GROUPS))
    parser.add_argument("--jobs", type=int, default=1, help="compile in this many processes")
    parser.add_argument("--traceback", action="store_true", help="print the full error")
    args = parser.parse_args()
    dtypes = args.dtypes.split(",")
    tasks = [(group, i, dtypes, args.arch, args.traceback)
             for group in args.only.split(",") for i, _ in enumerate(GROUPS[group](dtypes))]
    print(f"Triton {triton.__version__}, sm_{args.arch}: registers per thread, spill stores/loads "
          f"and shared memory in bytes")
    init_worker()
    with multiprocessing.get_context("spawn").Pool(args.jobs, init_worker) if args.jobs > 1 \
            else contextlib.nullcontext() as pool:
        rows = pool.imap(run_one, tasks) if pool else map(run_one, tasks)
        failures = 0
        for ok, row in rows:
            failures += not ok
            print(row, flush=True)
    print(f"{len(tasks) - failures}/{len(tasks)} compiled, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
