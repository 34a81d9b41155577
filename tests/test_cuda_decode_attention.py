"""The CUDA decode attention (csrc/decode_attention.cu through mini_llm/ops/cuda/decode_attention.py)
against the float64 reference.

`gpu` tests (skipped without CUDA) run the kernels: mixed cache lengths per batch (length == Tq,
== Tmax, not a multiple of any key tile), Tq 1, 3, 4, 16 and 20 (several row blocks per kv head),
grouped-query and multi-head, head dims 64 and 128, fp32 / fp16 / bf16, one split (the split
kernel writes the output) against several (the combine kernel merges them) and more splits than
the short sequences have keys; the cache past each length is NaN and must never be read; every
output element is written (NaN-poisoned out); a strided q and a custom scale; torch.compile and
CUDA-graph replay with new lengths; opcheck; the wrapper's and the binding's checks on GPU
tensors. Unmarked tests (CI, no GPU): the wrapper's KernelInputError for CPU tensors, the
binding's own errors for CPU tensors and dtypes (the `cuda_ext` fixture builds the extension
where nvcc is, skips otherwise), and the op's fake implementation (what torch.compile traces).

    python -m pytest -q tests/test_cuda_decode_attention.py
"""

import math

import pytest
import torch

from attention_inputs import decode_inputs, decode_reference
from kernel_check import assert_matches, poisoned
from mini_llm.errors import KernelInputError
from mini_llm.ops.cuda import decode_attention as cuda_da

gpu = pytest.mark.gpu
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def run_binding(ext, q, k, v, cache_lens, num_splits, scale=None):
    """The binding on a NaN-poisoned output: an element no block writes stays NaN and fails."""
    out = poisoned(q.shape, q.dtype, device=q.device)
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale
    ext.decode_attention(q, k, v, cache_lens, out, scale, num_splits, torch.cuda.current_stream().cuda_stream)
    return out


# (B, nh, nkv, Tq, Tmax, lens): lengths == Tq and == Tmax, none a multiple of a key tile
# (16..32 keys per round of a block's warps, multiples of that per split).
CASES = {
    "gqa4-tq3": (3, 8, 2, 3, 517, [517, 3, 200]),
    "mha-tq1": (2, 4, 4, 1, 300, [1, 299]),
    "gqa4-tq4": (2, 8, 2, 4, 1000, [999, 4]),
    "mqa8-tq16": (1, 8, 1, 16, 130, [130]),  # 128 rows per kv head: 8 row blocks
    "gqa2-tq20": (2, 4, 2, 20, 90, [90, 21]),  # Tq past 16 works too
}


@gpu
@pytest.mark.parametrize("num_splits", [0, 1, 5], ids=["auto", "one-split", "five-splits"])
@pytest.mark.parametrize("hs", [64, 128])
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("case", CASES)
def test_matches_reference(cuda_ext, case, dtype, hs, num_splits):
    B, nh, nkv, t_q, t_max, lens = CASES[case]
    q, k, v, cache_lens = decode_inputs(B, nh, nkv, t_q, t_max, hs, lens, dtype)
    assert_matches(run_binding(cuda_ext, q, k, v, cache_lens, num_splits), decode_reference(q, k, v, cache_lens))


@gpu
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_split_count_does_not_change_the_answer(cuda_ext, dtype):
    """One split, several, and far more than the short sequences have keys (their blocks exit at
    once and the combine must skip them): each the reference, and the same up to rounding."""
    q, k, v, cache_lens = decode_inputs(3, 4, 2, 3, 700, 128, [700, 5, 333], dtype)
    want = decode_reference(q, k, v, cache_lens)
    outs = {n: run_binding(cuda_ext, q, k, v, cache_lens, n) for n in (1, 3, 100)}
    for n, out in outs.items():
        assert_matches(out, want)
        assert_matches(out, outs[1].double())


@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_long_caches_and_big_batches(dtype):
    """The automatic plan: one long sequence cut into many splits; a batch that fills the GPU
    with one split per sequence; ragged lengths up to 32k."""
    for B, nh, nkv, t_max, lens in [(1, 8, 2, 32768, [32768]), (72, 8, 4, 512, None),
                                    (4, 8, 8, 9000, [9000, 1, 4097, 8191])]:
        lens = lens or torch.randint(1, t_max + 1, (B,)).tolist()
        q, k, v, cache_lens = decode_inputs(B, nh, nkv, 1, t_max, 128, lens, dtype)
        assert_matches(cuda_da.decode_attention(q, k, v, cache_lens), decode_reference(q, k, v, cache_lens))


@gpu
def test_public_function_strided_q_and_scale():
    q, k, v, cache_lens = decode_inputs(2, 6, 3, 3, 333, 64, [333, 20], torch.bfloat16, strided_q=True)
    assert not q.is_contiguous()
    out = cuda_da.decode_attention(q, k, v, cache_lens, scale=0.3)
    assert out.shape == q.shape and out.is_contiguous()
    assert_matches(out, decode_reference(q, k, v, cache_lens, 0.3))


@gpu
def test_torch_compile():
    q, k, v, cache_lens = decode_inputs(2, 8, 2, 1, 257, 128, [257, 100], torch.bfloat16)
    compiled = torch.compile(cuda_da.decode_attention)
    assert_matches(compiled(q, k, v, cache_lens), decode_reference(q, k, v, cache_lens))


@gpu
def test_custom_op_passes_opcheck():
    q, k, v, cache_lens = decode_inputs(2, 4, 2, 2, 70, 64, [70, 2], torch.bfloat16)
    torch.library.opcheck(torch.ops.mini_llm.cuda_decode_attention.default, (q, k, v, cache_lens, 0.125, 0),
                          test_utils=("test_schema", "test_faketensor"))


@gpu
def test_cuda_graph_replay_reads_new_lengths():
    """Decoding under a CUDA graph: the lengths tensor is updated in place between replays (the
    wrapper skips its length check while capturing; the kernels read the lengths on the device)."""
    q, k, v, cache_lens = decode_inputs(2, 8, 2, 1, 600, 64, [600, 600], torch.float16)
    cache_lens.copy_(torch.tensor([10, 20], dtype=torch.int32))
    cuda_da.decode_attention(q, k, v, cache_lens)  # warm-up outside the graph (builds, plans)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = cuda_da.decode_attention(q, k, v, cache_lens)
    for lens in ([10, 20], [600, 1], [321, 599]):
        cache_lens.copy_(torch.tensor(lens, dtype=torch.int32))
        graph.replay()
        torch.cuda.synchronize()
        assert_matches(out, decode_reference(q, k, v, cache_lens))


@gpu
def test_wrapper_rejects_bad_inputs():
    q, k, v, cache_lens = decode_inputs(1, 4, 2, 2, 50, 64, [50], torch.bfloat16)
    with pytest.raises(KernelInputError, match="head dim 96 is not supported"):
        cuda_da.decode_attention(q[..., :48].repeat(1, 1, 1, 2), k[..., :48].repeat(1, 1, 1, 2),
                                 v[..., :48].repeat(1, 1, 1, 2), cache_lens)
    with pytest.raises(KernelInputError, match="4 query heads cannot share 3"):
        cuda_da.decode_attention(q, k.repeat(1, 2, 1, 1)[:, :3].contiguous(), v.repeat(1, 2, 1, 1)[:, :3].contiguous(),
                                 cache_lens)
    with pytest.raises(KernelInputError, match=r"must lie in \[2, 50\]"):
        cuda_da.decode_attention(q, k, v, torch.tensor([1], dtype=torch.int32, device="cuda"))
    with pytest.raises(KernelInputError, match="cache_lens must be an int32"):
        cuda_da.decode_attention(q, k, v, cache_lens.long())
    with pytest.raises(KernelInputError, match="num_splits must be an int >= 1"):
        cuda_da.decode_attention(q, k, v, cache_lens, num_splits=0)


@gpu
def test_binding_rejects_bad_inputs(cuda_ext):
    q, k, v, cache_lens = decode_inputs(2, 4, 2, 2, 48, 64, [48, 9], torch.bfloat16)
    stream = torch.cuda.current_stream().cuda_stream
    out = torch.empty_like(q)

    def call(q=q, k=k, v=v, lens=cache_lens, out=out, num_splits=0):
        cuda_ext.decode_attention(q, k, v, lens, out, 0.125, num_splits, stream)

    bad = [
        (dict(k=k.half()), "k_cache must have q's dtype"),
        (dict(v=v[:, :, :40].contiguous()), "differ in shape"),
        (dict(q=q[:1].contiguous(), out=out[:1]), "disagree on batch or head dim"),
        (dict(out=torch.empty_like(q[:, :, :1])), "out must have q's shape"),
        (dict(k=k.repeat(1, 2, 1, 1)[:, :3].contiguous(), v=v.repeat(1, 2, 1, 1)[:, :3].contiguous()),
         "4 query heads cannot share 3"),
        (dict(q=q.transpose(1, 2)), "q must be contiguous"),
        (dict(k=k.transpose(2, 3)), "k_cache must be contiguous"),
        (dict(lens=cache_lens.long()), "cache_lens must be an int32 tensor of shape"),
        (dict(lens=cache_lens[:1]), "cache_lens must be an int32 tensor of shape"),
        (dict(lens=cache_lens.cpu()), "cache_lens must be a CUDA tensor"),
        (dict(q=q.repeat(1, 1, 25, 1)[:, :, :49].contiguous(), out=torch.empty(2, 4, 49, 64).to(q)),
         "Tq = 49 new positions do not fit a cache of Tmax = 48"),
        (dict(k=torch.empty(k.numel() + 1, dtype=k.dtype, device="cuda")[1:].view(k.shape)), "16-byte aligned"),
        (dict(num_splits=-1), "num_splits must be >= 0"),
    ]
    for kwargs, message in bad:
        with pytest.raises(RuntimeError, match=message):
            call(**kwargs)
    q96 = torch.randn(2, 4, 2, 96, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="head dim 96 is not supported"):
        call(q=q96, k=torch.randn(2, 2, 48, 96, device="cuda", dtype=torch.bfloat16),
             v=torch.randn(2, 2, 48, 96, device="cuda", dtype=torch.bfloat16), out=torch.empty_like(q96))


def test_wrapper_rejects_cpu_tensors():
    q, k, v, cache_lens = decode_inputs(1, 2, 1, 1, 8, 64, [8], torch.float32, device="cpu")
    with pytest.raises(KernelInputError, match="inputs must be CUDA tensors"):
        cuda_da.decode_attention(q, k, v, cache_lens)


def test_binding_rejects_cpu_tensors_and_dtypes(cuda_ext):
    q, k, v, cache_lens = decode_inputs(1, 2, 1, 1, 8, 64, [8], torch.float32, device="cpu")
    with pytest.raises(RuntimeError, match="q must be a CUDA tensor"):
        cuda_ext.decode_attention(q, k, v, cache_lens, torch.empty_like(q), 0.125, 0, 0)
    with pytest.raises(RuntimeError, match="q must be float32, float16 or bfloat16"):
        cuda_ext.decode_attention(q.double(), k, v, cache_lens, torch.empty_like(q), 0.125, 0, 0)


def test_fake_implementation_gives_the_output_shape():
    """What torch.compile traces with: no extension and no GPU needed."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q = torch.empty(2, 4, 3, 64, dtype=torch.bfloat16, device="cuda")
        cache = torch.empty(2, 2, 50, 64, dtype=torch.bfloat16, device="cuda")
        lens = torch.empty(2, dtype=torch.int32, device="cuda")
        out = torch.ops.mini_llm.cuda_decode_attention(q, cache, cache, lens, 0.125, 0)
    assert (out.shape, out.dtype, out.device.type) == (q.shape, q.dtype, "cuda")
