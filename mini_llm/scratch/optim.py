"""Optimizers on NumPy arrays: SGD with momentum, and Adam with decoupled weight decay (AdamW).

Both update each parameter's `.data` in place from its `.grad` and keep their state (momentum,
running moments) in arrays of the parameter's shape and dtype. `lr` is a plain attribute: a
schedule sets it before each step. tests/test_scratch_nn.py checks both against torch.optim.

Weight decay applies to matrices and embeddings only (parameters with 2 or more dimensions),
never to biases and norm gains: the same rule as GPT.param_groups in model.py.
"""

import numpy as np


class Optimizer:
    def __init__(self, params, lr):
        self.params = list(params)
        self.lr = lr

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def step(self):
        for i, p in enumerate(self.params):
            if p.grad is not None:
                self.update(i, p.data, p.grad)

    def update(self, i, param, grad):
        raise NotImplementedError


class SGD(Optimizer):
    """velocity <- momentum * velocity + grad (+ weight_decay * param, an L2 penalty)
    param    <- param - lr * velocity
    With momentum 0 this is plain gradient descent; with 0.9 it averages about the last ten
    gradients, which damps the zig-zag across a narrow valley. (torch.optim.SGD's rule.)
    """

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0):
        super().__init__(params, lr)
        self.momentum, self.weight_decay = momentum, weight_decay
        self.velocity = [None] * len(self.params)

    def update(self, i, param, grad):
        if self.weight_decay and param.ndim >= 2:
            grad = grad + self.weight_decay * param
        if self.momentum:
            if self.velocity[i] is None:
                self.velocity[i] = grad.copy()  # the first step starts from the gradient itself
            else:
                self.velocity[i] *= self.momentum
                self.velocity[i] += grad
            grad = self.velocity[i]
        param -= self.lr * grad


class AdamW(Optimizer):
    """m <- b1 m + (1 - b1) g              running mean of the gradient
    v <- b2 v + (1 - b2) g^2            running mean of its square
    p <- p - lr wd p                    decay, kept out of the adaptive step
    p <- p - lr m_hat / (sqrt(v_hat) + eps),  m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t)

    Each parameter moves by about lr, whatever its gradient's scale: m / sqrt(v) is a
    signal-to-noise ratio. weight_decay=0 gives plain Adam.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        super().__init__(params, lr)
        self.betas, self.eps, self.weight_decay = betas, eps, weight_decay
        self.m = [np.zeros_like(p.data) for p in self.params]
        self.v = [np.zeros_like(p.data) for p in self.params]
        self.t = 0

    def step(self):
        self.t += 1  # one count for all parameters: the bias corrections below use it
        super().step()

    def update(self, i, param, grad):
        (b1, b2), m, v = self.betas, self.m[i], self.v[i]
        m *= b1
        m += (1 - b1) * grad
        v *= b2
        v += (1 - b2) * grad * grad
        if self.weight_decay and param.ndim >= 2:
            param *= 1 - self.lr * self.weight_decay
        denom = np.sqrt(v / (1 - b2**self.t))
        denom += self.eps
        param -= (self.lr / (1 - b1**self.t)) * m / denom
