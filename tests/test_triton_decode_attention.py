"""The Triton decode attention (kernels/decode_attention.py) against the float64 reference:
mixed cache lengths per batch (length == Tq, == Tmax, not a multiple of the key block), Tq 1,
3 and 16, grouped-query and multi-head, head dims 64 and 128, fp32 and bf16, a strided q; the
split count (one chunk, several, chunks past a sequence's end) does not change the answer;
the cache past each length is NaN and must never be read; input checks; the torch.library
registration. On CPU the kernels run in Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1); the `gpu` tests add the big grid (lengths to 32k, batch to 64) and CUDA
graph capture.   Run: python -m pytest -q tests/test_triton_decode_attention.py
"""

import pytest
import torch

from attention_inputs import decode_inputs, decode_reference
from kernel_check import DEVICE, assert_matches
from mini_llm.errors import KernelInputError

da = pytest.importorskip("mini_llm.kernels.decode_attention")


# (B, nh, nkv, Tq, Tmax, hs, lens): lengths equal to Tq and to Tmax, and not multiples of the
# 16-key block the interpreter uses (the GPU uses 64).
CASES = {
    "gqa-tq3-hs64": (3, 8, 2, 3, 45, 64, [37, 3, 45]),
    "mha-tq1-hs128": (2, 4, 4, 1, 50, 128, [1, 29]),
    "gqa-tq1-hs128": (2, 8, 2, 1, 40, 128, [40, 17]),
    "mqa-tq16-hs64": (1, 8, 1, 16, 20, 64, [20]),  # 128 q-tile rows: several row blocks
    "mha-tq1-hs32": (2, 4, 4, 1, 23, 32, [23, 6]),  # the CPU preset's head size
}


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MATCH = [(case, dtype) for case in CASES for dtype in ("fp32", "bf16")] + [("gqa-tq3-hs64", "fp16")]


@pytest.mark.parametrize("case,dtype", [pytest.param(c, DTYPES[d], id=f"{c}-{d}") for c, d in MATCH])
def test_matches_reference(case, dtype):
    B, nh, nkv, t_q, t_max, hs, lens = CASES[case]
    q, k, v, cache_lens = decode_inputs(B, nh, nkv, t_q, t_max, hs, lens, dtype)
    out = da.decode_attention(q, k, v, cache_lens)
    assert_matches(out, decode_reference(q, k, v, cache_lens))


def test_strided_q_and_scale():
    q, k, v, cache_lens = decode_inputs(2, 6, 3, 3, 33, 64, [33, 20], torch.float32, strided_q=True)
    assert not q.is_contiguous()
    assert_matches(da.decode_attention(q, k, v, cache_lens, scale=0.3), decode_reference(q, k, v, cache_lens, 0.3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_split_count_does_not_change_the_answer(dtype):
    """One chunk (the kernel writes the output itself), several (the combine kernel merges
    them), and more chunks than the short sequences have keys (their programs exit early and
    the combine must skip them): all the reference, and the same up to rounding."""
    q, k, v, cache_lens = decode_inputs(3, 4, 2, 3, 70, 64, [70, 5, 33], dtype)
    want = decode_reference(q, k, v, cache_lens)
    outs = {}
    for num_splits in (1, 3, 100):
        outs[num_splits] = da.decode_attention(q, k, v, cache_lens, num_splits=num_splits)
        assert_matches(outs[num_splits], want)
    for num_splits in (3, 100):
        assert_matches(outs[num_splits], outs[1].double())


def test_plan_splits():
    """The default plan covers the longest sequence with whole blocks and no empty chunk; a
    forced count is honoured up to one chunk per block."""
    block_n = da.tiles(torch.bfloat16).block_n
    for longest in (1, block_n, 5 * block_n + 3, 4096):
        for programs_per_split in (1, 16, 1000):
            n, size = da.plan_splits(programs_per_split, longest, block_n, torch.device(DEVICE))
            assert size % block_n == 0 and n * size >= longest > (n - 1) * size
    assert da.plan_splits(1, 10 * block_n, block_n, torch.device(DEVICE), num_splits=5) == (5, 2 * block_n)
    assert da.plan_splits(1, 2 * block_n, block_n, torch.device(DEVICE), num_splits=100) == (2, block_n)


def test_registered_op_and_fake():
    from torch._subclasses.fake_tensor import FakeTensorMode

    q, k, v, cache_lens = decode_inputs(2, 4, 2, 2, 20, 64, [20, 9], torch.float32)
    out = torch.ops.mini_llm.triton_decode_attention(q, k, v, cache_lens, 0.125, 2, 16)
    assert_matches(out, decode_reference(q, k, v, cache_lens, 0.125))
    strided_q = q.transpose(1, 2).contiguous().transpose(1, 2)
    with FakeTensorMode() as mode:
        fake = torch.ops.mini_llm.triton_decode_attention(
            *(mode.from_tensor(t) for t in (strided_q, k, v, cache_lens)), 0.125, 2, 16)
    assert fake.shape == q.shape and fake.dtype == q.dtype and fake.is_contiguous()


def _bad(**change):
    """Good inputs (B 2, nh 4, nkv 2, Tq 2, Tmax 20, hs 64) with some replaced."""
    q, k, v, cache_lens = decode_inputs(2, 4, 2, 2, 20, 64, [20, 9], torch.float32)
    args = dict(q=q, k_cache=k, v_cache=v, cache_lens=cache_lens)
    args.update({name: make(args) for name, make in change.items()})
    return args


OTHER_DEVICE = "meta" if DEVICE == "cpu" else "cpu"
BAD_INPUTS = {
    "length past the cache": (dict(cache_lens=lambda a: torch.tensor([21, 9], dtype=torch.int32)),
                              r"must lie in \[2, 20\]"),
    "length below Tq": (dict(cache_lens=lambda a: torch.tensor([20, 1], dtype=torch.int32)), r"must lie in \[2, 20\]"),
    "int64 lengths": (dict(cache_lens=lambda a: a["cache_lens"].long()), "cache_lens must be an int32 tensor"),
    "k and v differ": (dict(v_cache=lambda a: a["v_cache"][:, :, :19]), "differ in shape"),
    "batch mismatch": (dict(q=lambda a: a["q"][:1]), "disagree on batch or head dim"),
    "heads not grouped": (dict(q=lambda a: torch.randn(2, 3, 2, 64, device=DEVICE)), "3 query heads cannot share 2"),
    "head dim 48": (dict(q=lambda a: a["q"][..., :48], k_cache=lambda a: a["k_cache"][..., :48].contiguous(),
                         v_cache=lambda a: a["v_cache"][..., :48].contiguous()), "head dim 48 is not supported"),
    "dtype mix": (dict(q=lambda a: a["q"].to(torch.bfloat16)), "must share a dtype"),
    "int dtype": (dict(q=lambda a: a["q"].to(torch.int32)), "q has dtype torch.int32"),
    "other device": (dict(cache_lens=lambda a: a["cache_lens"].to(OTHER_DEVICE)), f"cache_lens is on {OTHER_DEVICE}"),
    "strided cache": (dict(k_cache=lambda a: a["k_cache"].transpose(2, 3).contiguous().transpose(2, 3)),
                      "k_cache must be contiguous"),
    "strided head dim": (dict(q=lambda a: a["q"].transpose(2, 3).contiguous().transpose(2, 3)),
                         "q must have stride 1 in its last"),
    "no splits": (dict(num_splits=lambda a: 0), "num_splits must be an int >= 1"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input(case):
    change, message = BAD_INPUTS[case]
    with pytest.raises(KernelInputError, match=message):
        da.decode_attention(**_bad(**change))


def test_cpu_tensors_need_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q, k, v, cache_lens = decode_inputs(1, 2, 2, 1, 8, 64, [8], torch.float32, device="cpu")
    with pytest.raises(KernelInputError, match="inputs must be CUDA tensors"):
        da.decode_attention(q, k, v, cache_lens)


def per_sequence_reference(q, k, v, cache_lens):
    """The float64 reference one sequence at a time over its filled cache only: the whole batch
    at once would widen B x nh x Tmax x hs to float64 (tens of GB at batch 64, 32k)."""
    outs = []
    for b, n in enumerate(cache_lens.tolist()):
        outs.append(decode_reference(q[b:b + 1], k[b:b + 1, :, :n], v[b:b + 1, :, :n], cache_lens[b:b + 1]))
    return torch.cat(outs)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("hs", [64, 128])
@pytest.mark.parametrize("nh,nkv,t_q", [(32, 8, 1), (32, 8, 4), (16, 16, 1), (32, 4, 16), (8, 1, 3)])
@pytest.mark.parametrize("B,t_max", [(1, 32768), (4, 8191), (16, 4096), (64, 1027)])
def test_grid_gpu(B, t_max, nh, nkv, t_q, hs, dtype):
    g = torch.Generator().manual_seed(B * t_max + nh * t_q)
    lens = torch.randint(t_q, t_max + 1, (B,), generator=g).tolist()
    lens[0] = t_max
    if B > 1:
        lens[-1] = t_q
    q, k, v, cache_lens = decode_inputs(B, nh, nkv, t_q, t_max, hs, lens, dtype, device="cuda")
    want = per_sequence_reference(q, k, v, cache_lens)
    assert_matches(da.decode_attention(q, k, v, cache_lens), want)
    assert_matches(da.decode_attention(q, k, v, cache_lens, num_splits=1), want)


@pytest.mark.gpu
def test_cuda_graph_replay_gpu():
    """Captured once (the lengths are not read back: the plan covers the whole cache), replayed
    after the lengths change in place, as a generation loop does."""
    B, nh, nkv, t_q, t_max, hs = 4, 16, 4, 1, 3000, 128
    q, k, v, cache_lens = decode_inputs(B, nh, nkv, t_q, t_max, hs, [t_max] * B, torch.bfloat16, device="cuda")
    da.decode_attention(q, k, v, cache_lens)  # compile outside the capture (same plan: full lengths)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = da.decode_attention(q, k, v, cache_lens)
    for lens in ([t_max, 1, 77, 2048], [5, 3000, 64, 1]):
        cache_lens.copy_(torch.tensor(lens, dtype=torch.int32))
        graph.replay()
        torch.cuda.synchronize()
        assert_matches(out, per_sequence_reference(q, k, v, cache_lens))


def test_a_known_longest_length_skips_reading_the_lengths_back(monkeypatch):
    """The KV cache knows its lengths on the host: passing the longest spares the device sync
    (here: the read-back would raise), and a longest outside [Tq, Tmax] is still refused."""
    q, k, v, cache_lens = decode_inputs(2, 4, 2, 2, 20, 64, [20, 9], torch.float32)
    want = decode_reference(q, k, v, cache_lens)
    monkeypatch.setattr(torch, "aminmax", lambda *a, **kw: pytest.fail("the lengths were read back"))
    assert_matches(da.decode_attention(q, k, v, cache_lens, None, 20), want)
    with pytest.raises(KernelInputError, match=r"longest 21 must lie in \[2, 20\]"):
        da.decode_attention(q, k, v, cache_lens, None, 21)
