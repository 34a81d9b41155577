"""A neuron, a layer and an MLP out of scalar Values, trained on a small 2-D classification set.

    python -m mini_llm.scratch.scalar_nn     # prints loss and accuracy as it learns two moons

This is the whole idea of a neural network with nothing hidden: every weight is one Value,
every multiply-add is one node of the graph, and `loss.backward()` walks all of them. It is
slow (a few thousand Python objects per example); tensor.py does the same with arrays.
"""

import numpy as np

from .scalar import Value


class Neuron:
    """out = act(w . x + b), one weight per input."""

    def __init__(self, n_in, activation, rng):
        self.w = [Value(w) for w in rng.uniform(-1.0, 1.0, n_in)]
        self.b = Value(0.0)
        self.activation = activation  # "tanh", "relu" or None (linear, for the output)

    def __call__(self, x):
        out = sum((wi * xi for wi, xi in zip(self.w, x)), self.b)
        return out if self.activation is None else getattr(out, self.activation)()

    def parameters(self):
        return self.w + [self.b]


class Layer:
    def __init__(self, n_in, n_out, activation, rng):
        self.neurons = [Neuron(n_in, activation, rng) for _ in range(n_out)]

    def __call__(self, x):
        return [n(x) for n in self.neurons]

    def parameters(self):
        return [p for n in self.neurons for p in n.parameters()]


class MLP:
    """Layers of the given sizes, `activation` between them, a linear last layer."""

    def __init__(self, sizes, activation="tanh", seed=0):
        rng = np.random.default_rng(seed)
        last = len(sizes) - 2
        self.layers = [Layer(sizes[i], sizes[i + 1], None if i == last else activation, rng)
                       for i in range(len(sizes) - 1)]

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        return x

    def parameters(self):
        return [p for layer in self.layers for p in layer.parameters()]

    def zero_grad(self):
        for p in self.parameters():
            p.grad = 0.0


def make_moons(n, noise=0.1, seed=0):
    """Two interleaving half circles: X (n, 2) floats, y (n,) labels in {-1, +1}."""
    rng = np.random.default_rng(seed)
    angle = rng.uniform(0.0, np.pi, n)
    label = rng.integers(0, 2, n)
    x = np.where(label == 0, np.cos(angle), 1.0 - np.cos(angle))
    y = np.where(label == 0, np.sin(angle), 0.5 - np.sin(angle))
    points = np.stack([x, y], axis=1) + rng.normal(0.0, noise, (n, 2))
    return points, 2 * label - 1


def hinge_loss(model, X, y, alpha=1e-4):
    """Mean max-margin loss, relu(1 - y * score), plus a small L2 penalty; and the accuracy."""
    scores = [model(list(map(float, x)))[0] for x in X]
    losses = [(1 - int(yi) * s).relu() for yi, s in zip(y, scores)]
    penalty = alpha * sum(p * p for p in model.parameters())
    accuracy = np.mean([(s.data > 0) == (yi > 0) for yi, s in zip(y, scores)])
    return sum(losses) * (1.0 / len(losses)) + penalty, float(accuracy)


def train_classifier(model, X, y, steps, lr=0.5):
    """Full-batch gradient descent with a learning rate that decays to a tenth; returns
    [(loss, accuracy)] per step."""
    history = []
    for step in range(steps):
        loss, accuracy = hinge_loss(model, X, y)
        model.zero_grad()
        loss.backward()
        rate = lr * (1.0 - 0.9 * step / steps)
        for p in model.parameters():
            p.data -= rate * p.grad
        history.append((loss.data, accuracy))
    return history


if __name__ == "__main__":
    X, y = make_moons(100, seed=1)
    model = MLP([2, 16, 16, 1], seed=1)
    for step, (loss, accuracy) in enumerate(train_classifier(model, X, y, steps=60)):
        print(f"step {step:3d}  loss {loss:.4f}  accuracy {accuracy:.0%}")
