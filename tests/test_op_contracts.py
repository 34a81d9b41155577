"""One contract per op across the kernel backends (mini_llm/ops/__init__.py writes it down):
the Triton (kernels/<op>.py) and CUDA (mini_llm/ops/cuda/<op>.py) entry points take the
seam's arguments in its order with its defaults, their torch.library ops have one schema, the
differentiable ops' fake implementations and autograd give the same outputs and gradients, and
the limits the CUDA C++ states (csrc/<op>.h) are the ones mini_llm/ops/checks.py names.

Without a GPU: signatures and schemas are compared as they are; the ops run on meta tensors
(their fake implementations) and Triton's public functions run interpreted (TRITON_INTERPRET=1,
tests/conftest.py).

    python -m pytest -q tests/test_op_contracts.py
"""

import importlib
import inspect
import re
from pathlib import Path

import pytest
import torch

from mini_llm import ops
from mini_llm.ops import checks

pytest.importorskip("triton")

MODULES = {  # op -> (Triton module, CUDA module)
    "layer_norm": ("mini_llm.kernels.layer_norm", "mini_llm.ops.cuda.layer_norm"),
    "rms_norm": ("mini_llm.kernels.layer_norm", "mini_llm.ops.cuda.layer_norm"),
    "add_layer_norm": ("mini_llm.kernels.layer_norm", "mini_llm.ops.cuda.layer_norm"),
    "add_rms_norm": ("mini_llm.kernels.layer_norm", "mini_llm.ops.cuda.layer_norm"),
    "attention": ("mini_llm.kernels.attention", "mini_llm.ops.cuda.attention"),
    "decode_attention": ("mini_llm.kernels.decode_attention", "mini_llm.ops.cuda.decode_attention"),
    "quant_matmul": ("mini_llm.kernels.quant_matmul", "mini_llm.ops.cuda.quant_matmul"),
}
# Keyword-only tuning knobs each backend may add after the seam's arguments: name -> default.
KNOBS = {
    ("triton", "decode_attention"): {"num_splits": None},
    ("cuda", "decode_attention"): {"num_splits": None},
    ("triton", "quant_matmul"): {"split_k": None},
    ("cuda", "quant_matmul"): {"path": "auto"},
}
DIFFERENTIABLE_OPS = ("layer_norm_fwd", "layer_norm_bwd", "attention_fwd", "attention_bwd")
INFERENCE_OPS = {"decode_attention": 5, "quant_matmul": 4}  # op -> how many arguments are the public ones
CSRC = Path(__file__).resolve().parents[1] / "csrc"


def entry(backend, module_op):
    module, op = module_op
    return getattr(importlib.import_module(MODULES[module][backend == "cuda"]), op)


def parameters(fn):
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("op", sorted(MODULES))
def test_entry_points_take_the_seams_arguments(op, backend):
    fn = entry(backend, (op, op))
    seam = parameters(getattr(ops, op))
    params = parameters(fn)
    assert params[:len(seam)] == seam
    knobs = {name: default for name, kind, default in params[len(seam):]
             if kind is inspect.Parameter.KEYWORD_ONLY}
    assert len(knobs) == len(params) - len(seam) and knobs == KNOBS.get((backend, op), {})


@pytest.mark.parametrize("name", ["attention_forward", "attention_backward"])
def test_attention_passes_have_one_signature(name):
    assert parameters(entry("triton", ("attention", name))) == parameters(entry("cuda", ("attention", name)))


def schema(backend, op):
    """([(argument name, type)], [return type]) of torch.ops.mini_llm.<backend>_<op>."""
    for module in {m for pair in MODULES.values() for m in pair}:
        importlib.import_module(module)  # importing a module registers its ops
    s = getattr(torch.ops.mini_llm, f"{backend}_{op}").default._schema
    return [(a.name, str(a.type)) for a in s.arguments], [str(r.type) for r in s.returns]


@pytest.mark.parametrize("op", DIFFERENTIABLE_OPS)
def test_differentiable_ops_have_one_schema(op):
    assert schema("triton", op) == schema("cuda", op)


@pytest.mark.parametrize("op", sorted(INFERENCE_OPS))
def test_inference_ops_take_the_public_arguments_first(op):
    (triton_args, triton_returns), (cuda_args, cuda_returns) = schema("triton", op), schema("cuda", op)
    n = INFERENCE_OPS[op]
    assert triton_args[:n] == cuda_args[:n] and triton_returns == cuda_returns == ["Tensor"]
    assert [name for name, _ in triton_args[:n]] == [p[0] for p in parameters(getattr(ops, op))][:n]


# -- the ops' outputs and gradients, on meta tensors (fake implementations + autograd) ----------


def meta(*shape, dtype=torch.bfloat16):
    return torch.randn(*shape, dtype=dtype, device="meta", requires_grad=True)


def described(tensors):
    return [None if t is None else (tuple(t.shape), t.dtype) for t in tensors]


def run_on_meta(backend, op, inputs, upstream):
    """(outputs, gradients of the tensor inputs) of torch.ops.mini_llm.<backend>_<op>, described."""
    outputs = getattr(torch.ops.mini_llm, f"{backend}_{op}")(*inputs)
    differentiable = [o for o in outputs if o.requires_grad]
    leaves = [t for t in inputs if isinstance(t, torch.Tensor)]
    grads = torch.autograd.grad(differentiable, leaves, [upstream(o) for o in differentiable], allow_unused=True)
    return described(outputs), described(grads)


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("rms", [False, True])
def test_norm_ops_give_the_same_outputs_and_gradients(rms, fused):
    # One dtype throughout: what the CUDA op takes (its public functions cast before it).
    x, delta = meta(6, 40), meta(6, 40) if fused else None
    weight, bias = meta(40, dtype=torch.float32), None if rms else meta(40, dtype=torch.float32)
    inputs = (x, delta, weight, bias, 1e-5, rms)
    got = {b: run_on_meta(b, "layer_norm_fwd", inputs, torch.empty_like) for b in ("triton", "cuda")}
    assert got["triton"] == got["cuda"]
    (s, y, mean, rstd), grads = got["cuda"]
    assert (s, y, mean, rstd) == ((x.shape, x.dtype) if fused else ((0,), x.dtype), (x.shape, x.dtype),
                                  ((0,) if rms else (6,), torch.float32), ((6,), torch.float32))
    assert grads == described(t.detach() if t is not None else None for t in (x, delta, weight, bias)
                              if t is not None)


def test_attention_ops_give_the_same_outputs_and_gradients():
    q, k, v = meta(2, 3, 17, 64), meta(2, 3, 40, 64), meta(2, 3, 40, 64)
    got = {b: run_on_meta(b, "attention_fwd", (q, k, v, True, 0.125), torch.empty_like) for b in ("triton", "cuda")}
    assert got["triton"] == got["cuda"]
    assert got["cuda"] == ([((2, 3, 17, 64), torch.bfloat16), ((2, 3, 17), torch.float32)],
                           described(t.detach() for t in (q, k, v)))


# -- Triton's public functions return what the seam promises (interpreted) ----------------------


def test_triton_norms_return_the_seams_structure():
    from mini_llm.kernels import layer_norm as ln

    x, delta, w = torch.randn(3, 16), torch.randn(3, 16), torch.randn(16)
    assert isinstance(ln.layer_norm(x, w), torch.Tensor) and isinstance(ln.rms_norm(x, w), torch.Tensor)
    for fused, plain in ((ln.add_layer_norm, ln.layer_norm), (ln.add_rms_norm, ln.rms_norm)):
        s, y = fused(x, delta, w)  # (x + delta, norm(x + delta)), the seam's order
        assert torch.equal(s, x + delta)
        torch.testing.assert_close(y, plain(x + delta, w))


def test_triton_attention_returns_the_seams_structure():
    from mini_llm.kernels import attention as fa

    q, k, v = (torch.randn(1, 2, t, 32) for t in (5, 9, 9))
    o = fa.attention(q, k, v)
    o2, lse = fa.attention_forward(q, k, v)
    assert o.shape == q.shape and torch.equal(o, o2) and (lse.shape, lse.dtype) == ((1, 2, 5), torch.float32)
    dq, dk, dv = fa.attention_backward(q, k, v, o2, lse, torch.randn_like(o2), True)
    assert (dq.shape, dk.shape, dv.shape) == (q.shape, k.shape, v.shape)


# -- limits: named once in Python, the CUDA C++ constants held to them --------------------------


def header_constant(header, name):
    """The value(s) of `constexpr int name = N;` or `constexpr int name[] = {a, b};` in csrc/header."""
    text = (CSRC / header).read_text()
    match = re.search(rf"constexpr int {name}(\[\])? = \{{?([\d, ]+)\}}?;", text)
    assert match, f"{name} not found in csrc/{header}"
    values = tuple(int(v) for v in match.group(2).split(","))
    return values if match.group(1) else values[0]


@pytest.mark.parametrize("header,name,python", [
    ("layer_norm.h", "kNormMaxCols", checks.CUDA_NORM_MAX_COLS),
    ("attention.h", "kAttentionHeadDims", checks.ATTENTION_HEAD_DIMS),
    ("decode_attention.h", "kDecodeHeadDims", checks.CUDA_DECODE_HEAD_DIMS),
    ("quant_matmul.h", "kQuantGroupSizes", checks.QUANT_GROUP_SIZES),
])
def test_cuda_limits_are_the_ones_python_names(header, name, python):
    assert header_constant(header, name) == python
