"""A character-level MLP language model (Bengio et al., 2003), on the tensor engine.

Predict the next character from the previous k: look up each of the k characters' embedding
vectors, lay them side by side, and feed them through one tanh hidden layer to a score
(logit) for every character of the vocabulary.

    ids (B, k) -> embeddings (B, k, d) -> flattened (B, k*d) -> tanh(hidden) (B, H) -> logits (B, V)

Unlike the transformer it has a fixed window, no attention and no positions beyond the order
in which the k vectors are laid out; on Tiny Shakespeare it still gets well under 2 nats per
character. train.py trains it; bench/scratch_step_vs_torch.py times it against the same model
in PyTorch.
"""

import numpy as np

from . import functional as F
from .nn import MLP, Embedding, Module
from .tensor import no_grad


class CharMLP(Module):
    def __init__(self, vocab_size, context, n_embd, hidden, seed=0, dtype=np.float32):
        rng = np.random.default_rng(seed)
        self.context = context
        self.wte = Embedding(vocab_size, n_embd, rng, dtype)
        self.mlp = MLP(context * n_embd, hidden, vocab_size, "tanh", True, rng, dtype)

    def forward(self, ids):  # (B, k) integers -> logits (B, V)
        x = self.wte(ids)  # (B, k, d)
        return self.mlp(x.reshape(x.shape[0], -1))  # (B, k*d) -> (B, V)

    def loss(self, ids, targets):
        return F.cross_entropy(self(ids), targets)


def windows(ids, context):
    """Every (k characters, the next one) pair of a 1-D id array, as a view:
    (len(ids) - k, k + 1), the inputs in [:, :k] and the target in [:, k]."""
    return np.lib.stride_tricks.sliding_window_view(ids, context + 1)


def sample(model, start_id, n, rng, temperature=0.8):
    """n new ids, each drawn from softmax(logits / temperature) given the last k ids. The
    window starts as k copies of `start_id` (e.g. a newline: "the start of a line")."""
    ids = [start_id] * model.context
    with no_grad():
        for _ in range(n):
            logits = model(np.array([ids[-model.context:]])).data[0].astype(np.float64)
            p = np.exp((logits - logits.max()) / temperature)
            ids.append(int(rng.choice(len(p), p=p / p.sum())))
    return ids[model.context:]
