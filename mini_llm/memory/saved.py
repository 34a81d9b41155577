"""What each op of a training step keeps for its backward, and what its backward creates and
frees: one `Step` per op, grouped into a `Layer` per block. predict.py walks them.

Notation: B batch, T context, C = n_embd, nh heads, hs = C // nh, V vocabulary, H the MLP's
hidden width, N = B * T tokens, S = B * nh * T * T * 4 (one float32 attention matrix). Bytes.
"""

from dataclasses import dataclass, field

FP32, BF16, INT64 = 4, 2, 8
MIB = 2**20


@dataclass
class Step:
    """One op of the forward pass, as its backward sees it.

    saved       (what, bytes) autograd keeps from the forward; freed once this backward has run
    grad_in     gradients its backward creates for its inputs (they flow on to earlier ops)
    grad_out    the gradient of its output that its backward consumes; freed after it
    param_grad  the .grad tensors it creates, kept until the optimizer step
    workspace   scratch that lives only while its backward runs
    """

    name: str
    saved: list = field(default_factory=list)
    grad_in: int = 0
    grad_out: int = 0
    param_grad: int = 0
    workspace: int = 0

    @property
    def saved_bytes(self):
        return sum(n for _, n in self.saved)


@dataclass
class Layer:
    """A group of steps: the embeddings, one transformer block, or the head and the loss.

    kept: for a checkpointed block, what its forward keeps instead of the saved tensors: its
    input first (which ln_1 would save anyway), then the RNG state.
    """

    name: str
    steps: list
    kept: list | None = None

    @property
    def saved_bytes(self):
        return sum(s.saved_bytes for s in self.steps)

    @property
    def activation_bytes(self):
        """What stays alive from the forward to the backward."""
        return self.saved_bytes if self.kept is None else sum(n for _, n in self.kept)


class Shapes:
    """The sizes every op needs, and the dtype and device rules that apply to them."""

    def __init__(self, config, batch_size, dtype, device):
        self.B, self.T, self.C = batch_size, config.block_size, config.n_embd
        self.nh, self.V = config.n_head, config.vocab_size
        self.hs = self.C // self.nh
        self.N = self.B * self.T
        self.autocast = dtype == "bfloat16"
        self.act = BF16 if self.autocast else FP32  # matmul outputs and attention, under autocast
        self.cuda = device == "cuda"
        self.S = self.B * self.nh * self.T * self.T * FP32

    def mask(self, elem_bytes):
        """Bytes per element of a dropout mask: CUDA's fused dropout keeps a bool; the CPU path
        keeps a tensor of the input's dtype holding 0 or 1/(1-p)."""
        return 1 if self.cuda else elem_bytes


def _param_bytes(model, prefix):
    return sum(p.numel() * FP32 for n, p in model.named_parameters() if n.startswith(prefix + "."))


def _linear(s, name, fan_in, fan_out, param_bytes, saves_input=True, grad_out=None):
    """y = x W^T (+ b), W (fan_out, fan_in). Saves x for dW = dy^T x and W for dx = dy W (W is a
    parameter: no cost, except under autocast, where both are bf16 copies made for the matmul;
    autocast caches the weight's copy and the matmul's saved reference keeps it until this
    backward). The backward makes dx and dW (bf16 under autocast, then copied into the fp32
    .grad). grad_out: what the gradient of y costs, if not a fresh (B,T,fan_out) tensor."""
    saved = [(f"{name}: its input (B,T,{fan_in}), for dW", s.N * fan_in * s.act)] if saves_input else []
    weight_copy = fan_in * fan_out * BF16 if s.autocast else 0
    if s.autocast:
        saved.append((f"{name}: bf16 copy of W, for dx", weight_copy))
    return Step(name, saved, grad_in=s.N * fan_in * s.act,
                grad_out=s.N * fan_out * s.act if grad_out is None else grad_out,
                param_grad=param_bytes, workspace=weight_copy)


def _to_bf16(s, name, width):
    """Autocast copies an fp32 tensor (B,T,width) to bf16 for the next matmul; the backward copies
    the bf16 gradient back to fp32. Nothing is saved (the matmul saves the bf16 copy)."""
    return Step(f"{name} (to bf16)", grad_in=s.N * width * FP32, grad_out=s.N * width * BF16)


def _norm(s, config, name, param_bytes):
    """ln_1, ln_2, ln_f on the fp32 residual stream; their output is fp32 too."""
    x = (f"{name}: its input x (B,T,C), to normalise the gradient", s.N * s.C * FP32)
    stats = s.N * FP32  # one float per token
    if config.norm == "layernorm":
        # The fused kernel saves x, the mean and 1/std per token; it recomputes the rest.
        saved, workspace = [x, (f"{name}: mean and 1/std (B,T,1)", 2 * stats)], 0
    elif s.cuda:
        # CUDA's fused rms_norm saves x and 1/rms per token.
        saved, workspace = [x, (f"{name}: 1/rms (B,T,1)", stats)], 0
    else:
        # CPU: rms_norm runs as x.pow(2).mean() -> rsqrt -> x * r -> * weight; pow and the first
        # mul save x, rsqrt its result, the weight's mul the normalised x. Its backward holds about
        # two more (B,T,C) tensors than the gradient it returns.
        saved = [x, (f"{name}: 1/rms (B,T,1)", stats),
                 (f"{name}: normalised x (B,T,C), for dweight", s.N * s.C * FP32)]
        workspace = 2 * s.N * s.C * FP32
    return Step(name, saved, grad_in=s.N * s.C * FP32, grad_out=s.N * s.C * FP32,
                param_grad=param_bytes, workspace=workspace)


def _residual_branch_start(s):
    """x feeds both the branch (through a norm) and the residual path. The residual's gradient
    arrives first and waits; the branch's gradient for x is then added into it in place and
    freed."""
    return Step("residual (branch gradient added in)", grad_out=s.N * s.C * FP32)


def _residual_add(s):
    """x + branch(x): the gradient passes to both unchanged, so nothing is allocated; under
    autocast the branch (bf16) gets its own bf16 copy of it."""
    return Step("residual add", grad_in=s.N * s.C * BF16 if s.autocast else 0)


def _branch_gradient(s):
    """Bytes of the gradient the branch's last op receives and frees: its own bf16 copy under
    autocast, else nothing (it is the residual's gradient, which lives on)."""
    return s.N * s.C * BF16 if s.autocast else 0


def _dropout(s, name, elem_bytes, grad_out):
    """Saves its mask, to zero the same elements of the gradient."""
    width = s.N * s.C
    return Step(name, [(f"{name}: mask (B,T,C)", width * s.mask(elem_bytes))],
                grad_in=width * elem_bytes, grad_out=grad_out)


def _flash_attention(s, rotated):
    """The fused attention (F.scaled_dot_product_attention) keeps no T x T matrix: it saves q, k,
    v, its output and one logsumexp per head and query, and recomputes the probabilities in its
    backward. q, k, v are views of c_attn's output (B,T,3C), so that whole tensor stays alive;
    with RoPE q and k are new rotated tensors (v still keeps (B,T,3C) alive)."""
    width = s.N * s.C * s.act
    lse_rows = s.T
    if s.cuda and not s.autocast:  # fp32 on CUDA runs the memory-efficient kernel
        lse_rows = -(-s.T // 32) * 32  # its logsumexp is padded to a multiple of 32 positions
    saved = [("c_attn output (B,T,3C): q, k, v are views of it", 3 * width)]
    if rotated:
        saved.append(("rotated q and k (B,nh,T,hs)", 2 * width))
    saved += [("attention output (B,nh,T,hs), also c_proj's input", width),
              ("logsumexp (B,nh,T) fp32", s.B * s.nh * lse_rows * FP32)]
    # FlashAttention-2's backward accumulates dq in fp32.
    workspace = s.N * s.C * FP32 if s.cuda and s.autocast else 0
    return [Step("attention (flash)", saved, grad_in=3 * width, grad_out=width, workspace=workspace)]


def _materialized_attention(s, rotated):
    """The reference attention, softmax(q k^T / sqrt(hs) + mask) v, op by op (float32): three
    T x T matrices per layer stay saved (the masked scores for amax, exp's result, the
    probabilities for p @ v), and the backward of the softmax builds several more."""
    width, S, rows = s.N * s.C * FP32, s.S, s.B * s.nh * s.T * FP32
    # The matmuls flatten (B, nh) into one batch dimension. q, k, v are views into c_attn's
    # output (B,T,3C), which needs a copy for that, unless B or nh is 1; the rotated q and k are
    # contiguous already. A saved view keeps all of (B,T,3C) alive, until the last op saving one
    # (in the backward: q @ k^T if q and k are views, else p @ v) is differentiated.
    views = s.B == 1 or s.nh == 1
    qkv = ("c_attn output (B,T,3C): the views saved here keep it", 3 * width)
    if rotated:
        saved_qk = [("q @ k^T: the rotated q and k (B,nh,T,hs)", 2 * width)]
    else:
        saved_qk = [qkv] if views else [("q @ k^T: contiguous copies of q and k", 2 * width)]
    if not views:
        saved_v = [("p @ v: a contiguous copy of v (B,nh,T,hs)", width)]
    else:
        saved_v = [qkv] if rotated else []  # (else q @ k^T's views keep it already)
    return [
        Step("q @ k^T", saved_qk, grad_in=2 * width, grad_out=S),
        Step("* 1/sqrt(hs)", grad_in=S, grad_out=S),
        Step("causal mask", [("the causal mask (T,T) bool", s.T * s.T)], grad_in=S, grad_out=S),
        # amax saves its input and output. Its backward routes the gradient to the maxima with a
        # bool mask (S/4) and that mask as float32 (S); its gradient is then added in place into
        # the one the scores get from the subtraction, and freed.
        Step("row max (amax)", [("amax: masked scores (B,nh,T,T)", S), ("amax: row maxima", rows)],
             grad_in=S, grad_out=rows + S, workspace=S // 4 + S),
        # scores - max: the scores' gradient is the incoming one, passed on; the max's is a sum.
        Step("- max", grad_in=rows, workspace=S),
        Step("exp", [("exp: its result e (B,nh,T,T)", S)], grad_in=S, grad_out=S),
        Step("row sum", grad_out=rows),  # its gradient is broadcast and added into e's in place
        # e / sum saves both; d(sum) = -sum(g e / sum^2) takes three T x T temporaries.
        Step("/ row sum", [("divide: row sums", rows)], grad_in=S + rows, grad_out=S,
             workspace=3 * S),
        Step("p @ v", [("p @ v: the probabilities p (B,nh,T,T)", S), *saved_v],
             grad_in=S + width, grad_out=width),
        _to_tokens_first(width),
    ]


def _to_tokens_first(width):
    """y.transpose(1, 2).contiguous(): an attention output laid out (B,nh,T,hs) is copied into
    (B,T,C) order, and c_proj saves the copy; the backward copies the gradient back."""
    return Step("transpose to (B,T,C)", [("attention output copied to (B,T,C), c_proj's input", width)],
                grad_in=width, grad_out=width)


def _rope(s, name):
    """Rotates q or k (B,nh,T,hs); the multiplies save only the cos/sin tables (counted once, with
    the embeddings). The backward rebuilds the gradient from its even and odd halves (about
    (B,T,C) fp32 of scratch) and copies it back into (B,T,C) order."""
    width = s.N * s.C * s.act
    return Step(name, grad_in=width, grad_out=width, workspace=s.N * s.C * FP32)


def block_layer(s, config, model, i, kernels):
    """Block i, op by op in the order of Block.forward (model.py)."""
    p = f"h.{i}"
    C, H = s.C, model.h[i].mlp.c_proj.in_features
    rotated = config.pos == "rope"
    materialized = kernels["attention"] == "reference"
    steps = [_residual_branch_start(s), _norm(s, config, "ln_1", _param_bytes(model, f"{p}.ln_1"))]
    if s.autocast:
        steps.append(_to_bf16(s, "ln_1 output", C))
    steps.append(_linear(s, "c_attn", C, 3 * C, _param_bytes(model, f"{p}.attn.c_attn")))
    # split into q, k, v: their three gradients are concatenated back into one (B,T,3C).
    steps.append(Step("split q, k, v", grad_in=3 * s.N * C * s.act, grad_out=3 * s.N * C * s.act))
    if rotated:
        steps += [_rope(s, "RoPE on q"), _rope(s, "RoPE on k")]
    if materialized:
        steps += _materialized_attention(s, rotated)
    else:
        steps += _flash_attention(s, rotated)
    # c_proj's input is the flash attention's output, saved there, unless it had to be copied
    # into (B,T,C) order: the CPU kernel lays its output out like q, which RoPE made contiguous
    # (with one head, (B,1,T,hs) is already in (B,T,C) order).
    if rotated and not s.cuda and not materialized and s.nh > 1:
        steps.append(_to_tokens_first(s.N * C * s.act))
    # What the gradient reaching the last op of a branch costs: dropout's, when there is one.
    branch_end = s.N * C * s.act if config.dropout > 0 else _branch_gradient(s)
    steps.append(_linear(s, "attn.c_proj", C, C, _param_bytes(model, f"{p}.attn.c_proj"),
                         saves_input=False, grad_out=branch_end))
    if config.dropout > 0:
        steps.append(_dropout(s, "attn dropout", s.act, _branch_gradient(s)))
    steps += [_residual_add(s), _residual_branch_start(s),
              _norm(s, config, "ln_2", _param_bytes(model, f"{p}.ln_2"))]
    if s.autocast:
        steps.append(_to_bf16(s, "ln_2 output", C))
    if config.mlp == "gelu":
        steps += [
            _linear(s, "c_fc", C, H, _param_bytes(model, f"{p}.mlp.c_fc")),
            Step("gelu", [("gelu: its input (B,T,4C)", s.N * H * s.act)],
                 grad_in=s.N * H * s.act, grad_out=s.N * H * s.act),
        ]
    else:
        # SwiGLU: c_fc makes gate and up (B,T,2H) at once; silu(gate) * up.
        steps += [
            _linear(s, "c_fc", C, 2 * H, _param_bytes(model, f"{p}.mlp.c_fc")),
            Step("chunk gate, up", grad_in=2 * s.N * H * s.act, grad_out=2 * s.N * H * s.act),
            # silu saves gate, and the multiply saves up: views that keep all of (B,T,2H).
            Step("silu", [("c_fc output (B,T,2H): gate and up are views of it", 2 * s.N * H * s.act)],
                 grad_in=s.N * H * s.act, grad_out=s.N * H * s.act),
            Step("silu(gate) * up", [("multiply: silu(gate) (B,T,H), for d(up)", s.N * H * s.act)],
                 grad_in=2 * s.N * H * s.act, grad_out=s.N * H * s.act),
        ]
    steps.append(_linear(s, "mlp.c_proj", H, C, _param_bytes(model, f"{p}.mlp.c_proj"),
                         grad_out=branch_end))
    if config.dropout > 0:
        steps.append(_dropout(s, "mlp dropout", s.act, _branch_gradient(s)))
    steps.append(_residual_add(s))
    return Layer(f"block {i}", steps)


def embeddings_layer(s, config, model):
    width = s.N * s.C * FP32  # embeddings and the residual stream are fp32, even under autocast
    if config.tie_weights:
        # wte.grad already exists (the head made it): a dense (V,C) gradient is built and the sum
        # wte.grad + it replaces wte.grad.
        wte = Step("wte lookup", grad_out=width, workspace=2 * s.V * s.C * FP32)
    else:
        wte = Step("wte lookup", grad_out=width, param_grad=s.V * s.C * FP32)
    # (the token ids it saves are the batch x, counted there)
    steps = [wte]
    if config.pos == "learned":
        steps += [
            Step("wpe lookup", [("positions 0..T-1 (T,) int64", s.T * INT64)],
                 grad_out=s.T * s.C * FP32, param_grad=_param_bytes(model, "wpe")),
            # + broadcasts (T,C) over the batch; its backward sums the gradient over the batch.
            Step("token + position", grad_in=s.T * s.C * FP32),
        ]
    else:
        steps.append(Step("RoPE tables", [("RoPE cos and sin (T, hs/2) each", s.T * s.hs * FP32)]))
    if config.dropout > 0:
        steps.append(_dropout(s, "embedding dropout", FP32, width))
    return Layer("embeddings", steps)


def head_layer(s, config, model):
    logits = s.N * s.V
    steps = [_norm(s, config, "ln_f", _param_bytes(model, "ln_f"))]
    if s.autocast:
        steps.append(_to_bf16(s, "ln_f output", s.C))
    head_bytes = s.V * s.C * FP32  # creates wte.grad (tied) or lm_head.weight.grad
    steps.append(_linear(s, "lm_head (x @ W^T)", s.C, s.V, head_bytes))
    if s.autocast:  # cross-entropy runs in fp32: autocast copies the bf16 logits to fp32
        steps.append(Step("logits (to fp32)", grad_in=logits * BF16, grad_out=logits * FP32))
    steps += [
        # cross_entropy = log_softmax, then nll_loss picks -log p[target]. log_softmax saves its
        # result: its gradient is g - softmax * sum(g). nll_loss saves the targets (the batch y).
        Step("log_softmax", [("log_softmax: its result (B*T,V) fp32", logits * FP32)],
             grad_in=logits * FP32, grad_out=logits * FP32),
        Step("nll_loss", grad_in=logits * FP32),  # a (B*T,V) gradient, -1/N at each target
    ]
    return Layer("head + loss", steps)
