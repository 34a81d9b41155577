"""Optimisation from scratch: AdamW, the warm-up + cosine learning-rate schedule, and
global-norm gradient clipping. tests/test_optim.py checks each against PyTorch's."""

import math

import torch


class AdamW(torch.optim.Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter), one parameter at a time.

    m <- b1 m + (1 - b1) g              running mean of the gradient
    v <- b2 v + (1 - b2) g^2            running mean of its square
    p <- p - lr wd p                    decay, kept out of the adaptive step
    p <- p - lr m_hat / (sqrt(v_hat) + eps),  m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t)
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            lr, (beta1, beta2), eps, wd = (group[k] for k in ("lr", "betas", "eps", "weight_decay"))
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"].item()
                m, v, g = state["exp_avg"], state["exp_avg_sq"], p.grad
                m.lerp_(g, 1 - beta1)  # = b1 m + (1 - b1) g
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                p.mul_(1 - lr * wd)
                denom = (v / (1 - beta2**t)).sqrt_().add_(eps)
                p.addcdiv_(m, denom, value=-lr / (1 - beta1**t))
                del denom  # else it stays alive while the next parameter's is made


def lr_at(it, lr, min_lr, warmup_iters, decay_iters):
    """Linear warm-up to `lr`, then a half cosine down to `min_lr` at `decay_iters`."""
    if it < warmup_iters:
        return lr * (it + 1) / (warmup_iters + 1)
    if it >= decay_iters:
        return min_lr
    progress = (it - warmup_iters) / (decay_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


@torch.no_grad()
def clip_grad_norm(params, max_norm, total=None):
    """Scale all gradients together so their joint L2 norm is at most max_norm.

    Returns the norm before clipping. Clipping each tensor separately would change the
    direction of the update; one global factor only shortens it. `total`: the norm, when it
    was taken elsewhere (over the shards of several ranks).
    """
    grads = [p.grad for p in params if p.grad is not None]
    if total is None:
        total = torch.sqrt(sum(square_sum(g) for g in grads))
    scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        g.mul_(scale.to(g.dtype))
    return total.float()


def square_sum(t):
    """The sum of t's squared elements, in float64. The square of a float32 is exact in
    float64, and the sum's rounding is about 1e-16 relative: a norm summed in another order
    (over shards on several ranks, parallel/) gives the same float32 clipping factor, except in
    a step whose factor lies within that of a float32 rounding point (a chance of order 1e-8).
    Summed in float32, the two orders' norms differ in the last bits within a few steps.
    A chunk at a time, so the float64 copy stays small: 1 MiB on a CPU (where it stays in
    cache: faster than one pass), 64 MiB on a GPU (a few kernel launches per tensor)."""
    chunk = 1 << (22 if t.is_cuda else 16)
    zero = torch.zeros((), dtype=torch.float64, device=t.device)
    return sum((c.double().square().sum() for c in t.reshape(-1).split(chunk)), zero)
