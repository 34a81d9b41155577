"""Stage F: neural networks from scratch, on NumPy arrays, with complete backprop.

Read in this order (docs/stage-f-scratch.md walks through the chain rule beside the code):

    graph.py       the order in which backprop visits a computation graph (both engines)
    scalar.py      autograd on single numbers: Value, +, *, **, exp, log, tanh, relu
    scalar_nn.py   a neuron, a layer, an MLP of Values, trained on two moons
    tensor.py      the same on NumPy arrays: broadcasting, matmul, reductions, indexing
    functional.py  softmax, log-softmax, cross-entropy, layer norm, GELU, dropout, embedding
    nn.py          Linear, Embedding, LayerNorm, MLP modules
    optim.py       SGD with momentum, AdamW
    char_mlp.py    a character-level MLP language model (Bengio et al., 2003)
    train.py       its training loop: `mini-llm scratch train`
    block.py       one GPT-2 transformer block, checked against model.Block's gradients
    gradcheck.py   central finite differences: check any function's gradient yourself
"""

from .tensor import DTypeError, ShapeError, Tensor, no_grad

__all__ = ["DTypeError", "ShapeError", "Tensor", "no_grad"]
