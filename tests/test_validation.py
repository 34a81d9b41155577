"""The correctness rule (mini_llm/ops/validation.py) that the tests, the bench and the standalone
CUDA programs share: what it lets through and what not, and csrc/standalone/common.h holding the
same tolerances (C++ cannot import them, so this test is what keeps the two equal)."""

import math
import re
from pathlib import Path

import pytest
import torch

from mini_llm.ops.validation import TOLERANCE, WORST_ELEMENT, compare, within

COMMON_H = Path(__file__).resolve().parent.parent / "csrc" / "standalone" / "common.h"
CPP_TYPES = {"float32": "float", "float16": "__half", "bfloat16": "__nv_bfloat16"}


@pytest.mark.parametrize("dtype", sorted(TOLERANCE))
def test_standalone_programs_use_the_same_tolerances(dtype):
    source = COMMON_H.read_text()
    found = re.search(rf"struct Host<{re.escape(CPP_TYPES[dtype])}> {{.*?tolerance = ([0-9.e+-]+);", source, re.S)
    assert found, f"no tolerance for Host<{CPP_TYPES[dtype]}> in {COMMON_H}"
    assert float(found.group(1)) == TOLERANCE[dtype]


def test_a_few_wrong_elements_fail_though_the_norm_passes():
    want = torch.ones(10_000, dtype=torch.float64)
    got = want.float().clone()
    got[0] += 5 * WORST_ELEMENT * TOLERANCE["float32"]
    rel, worst, _, problem = compare([got], [want], [torch.float32])
    assert problem is None and rel <= TOLERANCE["float32"]  # averaged away by the norm
    assert not within(rel, worst, TOLERANCE["float32"])
    assert within(*compare([want.float()], [want], [torch.float32])[:2], TOLERANCE["float32"])


@pytest.mark.parametrize("got, problem", [
    (torch.ones(3), "shape (3,), expected (4,)"),
    (torch.ones(4, dtype=torch.float16), "dtype torch.float16, expected torch.float32"),
    (torch.tensor([1.0, math.nan, 1.0, 1.0]), "not finite"),
])
def test_wrong_shape_dtype_or_nan_is_a_problem(got, problem):
    assert compare([got], [torch.ones(4, dtype=torch.float64)], [torch.float32])[3] == problem
