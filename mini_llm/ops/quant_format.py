"""The quantized weight format (weight-only, symmetric; a weight W (N, K) = (out_features,
in_features), as in nn.Linear):

    int8, per output channel:  scale = absmax(row) / 127,  q = clamp(round(W / scale), -127, 127)
        qweight int8 (N, K); scales float16 (N, 1); group_size = K.
    int4, group-wise (group_size 32, 64 or 128 consecutive k of one row):
        scale = absmax(group) / 7,  q = clamp(round(W / scale), -7, 7), stored as q + 8 (0..15),
        two per byte: byte j of a row holds k = 2j in its low nibble, k = 2j + 1 in its high one.
        qweight uint8 (N, K // 2); scales float16 (N, K // group_size).

    W ~ dequantize(qweight, scales, group_size) = q * scale of its group, within scale / 2.

    The stored scale is the float16 at or just above absmax / qmax (so no |W| / scale exceeds
    qmax), and at least 2^-24, float16's smallest: an all-zero row or group has a tiny scale,
    q = 0, and dequantizes to exact zeros.

The matmul on the stored weight, x @ W.T, is the op `quant_matmul` of this seam (reference and
torch dequantize with this file; the Triton and CUDA kernels dequantize in registers).
mini_llm/quant.py builds modules and whole models on it.

    python -m pytest -q tests/test_quant.py
"""

import torch

from ..errors import ConfigError
from .checks import QUANT_BITS, QUANT_GROUP_SIZES, check_quant_weight

QMAX = {8: 127, 4: 7}
INT4_OFFSET = 8  # a stored nibble is q + 8, so -7..7 becomes 1..15
DEFAULT_INT4_GROUP_SIZE = 64
SMALLEST_FP16 = 2.0**-24  # the smallest positive float16 (subnormal): a scale is never 0


def resolve_group_size(bits, K, group_size=None):
    """The group size quantize uses for a weight with K input features, or a ConfigError.
    int8: one scale per output channel (None or K). int4: 32, 64 or 128 (None: 64)."""
    if bits not in QUANT_BITS:
        raise ConfigError(f"cannot quantize to {bits} bits; supported: {', '.join(map(str, QUANT_BITS))}")
    if bits == 8:
        if group_size not in (None, K):
            raise ConfigError(f"int8 has one scale per output channel: group_size must be None or "
                              f"K = {K}, got {group_size}")
        return K
    if K % 2:
        raise ConfigError(f"int4 packs two values per byte along K: K must be even, got K = {K}")
    group_size = DEFAULT_INT4_GROUP_SIZE if group_size is None else group_size
    if group_size not in QUANT_GROUP_SIZES:
        raise ConfigError(f"int4 group_size {group_size} is not supported; supported: "
                          f"{', '.join(map(str, QUANT_GROUP_SIZES))}")
    if K % group_size:
        raise ConfigError(f"group_size {group_size} does not divide K = {K}")
    return group_size


def pack_int4(q):
    """q: int8 (N, K) in [-7, 7], K even -> uint8 (N, K // 2): k = 2j low nibble, 2j + 1 high."""
    if q.dim() != 2 or q.shape[1] % 2:
        raise ConfigError(f"pack_int4 takes an (N, K) tensor with K even, got shape {tuple(q.shape)}")
    nibbles = (q.to(torch.int16) + INT4_OFFSET).to(torch.uint8)  # 1..15
    return nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)


def unpack_int4(packed):
    """uint8 (N, K // 2) -> int8 (N, K) in [-8, 7], the inverse of pack_int4."""
    low = (packed & 0xF).to(torch.int8) - INT4_OFFSET
    high = (packed >> 4).to(torch.int8) - INT4_OFFSET
    return torch.stack((low, high), dim=-1).flatten(-2)  # (N, K // 2, 2) -> k = 2j, 2j + 1


def _group_scales(groups, qmax):
    """float16 scales (N, n_groups) for groups (N, n_groups, group_size) float32, such that
    absmax / scale <= qmax holds for the stored float16 value (so round(W / scale) needs no
    clamp and |W - q * scale| <= scale / 2)."""
    absmax = groups.abs().amax(dim=-1)
    scales = (absmax / qmax).clamp_min(SMALLEST_FP16).to(torch.float16)
    if not torch.isfinite(scales).all():
        raise ConfigError(f"weights too large for float16 scales (absmax {absmax.max().item():.3g})")
    # Rounding to float16 may have made a scale smaller than absmax / qmax: take the next
    # float16 up (for positive floats, the next bit pattern is the next value).
    too_small = scales.float() * qmax < absmax
    return torch.where(too_small, (scales.view(torch.int16) + 1).view(torch.float16), scales)


def quantize(w, bits, group_size=None):
    """w: float (N, K) -> (qweight, scales) in the format above. group_size: int8 None or K
    (per output channel); int4 32, 64 or 128 (None: 64)."""
    if w.dim() != 2 or not w.is_floating_point():
        raise ConfigError(f"quantize takes a float (N, K) weight, got {w.dtype} {tuple(w.shape)}")
    if not torch.isfinite(w).all():
        raise ConfigError("cannot quantize a weight that holds inf or NaN")
    N, K = w.shape
    group_size = resolve_group_size(bits, K, group_size)
    qmax = QMAX[bits]
    groups = w.detach().float().reshape(N, K // group_size, group_size)
    scales = _group_scales(groups, qmax)  # (N, K // group_size) float16
    q = torch.round(groups / scales.float()[..., None]).clamp(-qmax, qmax).to(torch.int8).reshape(N, K)
    return (q if bits == 8 else pack_int4(q)), scales


def dequantize(qweight, scales, group_size):
    """(qweight, scales) -> W float32 (N, K): q times the scale of its group."""
    bits, N, K = check_quant_weight("dequantize", qweight, scales, group_size)
    q = qweight if bits == 8 else unpack_int4(qweight)
    groups = q.reshape(N, K // group_size, group_size).float() * scales.float()[..., None]
    return groups.reshape(N, K)
