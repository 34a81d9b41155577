"""Named configurations: a model shape plus the training settings that go with it.

`shakespeare-char` is nanoGPT's baby GPT with its recipe (config/train_shakespeare_char.py;
published val loss 1.4697). `shakespeare-char-cpu` is the model, batch and length of nanoGPT's
CPU command (published: about 1.88) with a higher learning rate: with nanoGPT's 1e-3 this
model ended at val 1.906 (mean of 3 seeds, 2-core CPU); 3e-3 learns more in the same 2000
steps (see docs/stage-3-training.md, "What it produced").
"""

from .errors import ConfigError

PRESETS = {
    "shakespeare-char": {
        "model": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2),
        "train": dict(batch_size=64, max_iters=5000, lr=1e-3, min_lr=1e-4, warmup_iters=100,
                      beta2=0.99, eval_interval=250, eval_iters=200),
    },
    "shakespeare-char-cpu": {
        "model": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0),
        "train": dict(batch_size=12, max_iters=2000, lr=3e-3, min_lr=3e-4, warmup_iters=100,
                      beta2=0.99, eval_interval=250, eval_iters=20),
    },
    "tiny": {  # for tests and smoke runs: seconds on a CPU
        "model": dict(n_layer=2, n_head=2, n_embd=32, block_size=16, dropout=0.0),
        "train": dict(batch_size=4, max_iters=20, lr=1e-3, min_lr=1e-4, warmup_iters=5,
                      beta2=0.99, eval_interval=10, eval_iters=2),
    },
}


def default_preset():
    """The baby GPT on a CUDA GPU; its CPU-sized variant otherwise."""
    import torch

    return "shakespeare-char" if torch.cuda.is_available() else "shakespeare-char-cpu"


def get_preset(name):
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return PRESETS[name]
