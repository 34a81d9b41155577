"""One training step of the character MLP: the NumPy engine against the same model in PyTorch,
timed on the same CPU in the same run.

    python bench/scratch_step_vs_torch.py [--min-run-time 2]

A step is what `mini-llm scratch train` does per batch: forward, cross-entropy, backward and an
AdamW update, float32, on the same batch shape. The PyTorch twin (nn.Embedding, nn.Linear,
tanh, F.cross_entropy, torch.optim.AdamW) starts from a copy of the NumPy model's weights, and
the script first checks that both give the same loss and gradients, so it times one model
twice. torch.utils.benchmark times both (median of blocked runs), with torch at its default
thread count (its Timer would otherwise pin 1 thread) and NumPy's BLAS at its default.

Also timed: the hot spot of the backward, the embedding's scatter-add, as np.add.at and as
the np.bincount formulation that functional.embedding uses.
Writes scratch_step_vs_torch.{json,md} into --out (bench/script.py).
"""

import argparse
import itertools
import json
import sys

import numpy as np
import torch
import torch.nn.functional as TF
from torch.utils.benchmark import Timer

from mini_llm.bench import script
from mini_llm.bench.train_vs_nanogpt import machine  # the CPU, versions, commit, date
from mini_llm.scratch import Tensor
from mini_llm.scratch import functional as F
from mini_llm.scratch.char_mlp import CharMLP
from mini_llm.scratch.optim import AdamW

VOCAB = 65  # Tiny Shakespeare's characters
SHAPES = [  # (batch, context, n_embd, hidden); the middle one is `mini-llm scratch train`'s
    (32, 8, 16, 128),
    (128, 8, 16, 512),
    (512, 8, 16, 1024),
]
TARGET = 2.0  # the issue: a NumPy step costs at most 2x the PyTorch step


class TorchCharMLP(torch.nn.Module):
    """The same model in PyTorch, parameters named as the NumPy model's."""

    def __init__(self, numpy_model):
        super().__init__()
        V, d = numpy_model.wte.weight.shape
        hidden = numpy_model.mlp.c_fc.weight.shape[0]
        self.wte = torch.nn.Embedding(V, d)
        self.mlp = torch.nn.ModuleDict({"c_fc": torch.nn.Linear(numpy_model.context * d, hidden),
                                        "c_proj": torch.nn.Linear(hidden, V)})
        self.load_state_dict({name: torch.tensor(p.data) for name, p in numpy_model.named_parameters()})

    def loss(self, ids, targets):
        x = self.wte(ids).flatten(1)
        return TF.cross_entropy(self.mlp["c_proj"](torch.tanh(self.mlp["c_fc"](x))), targets)


def training_step(model, optimizer, batches):
    """A function doing one training step per call, cycling through `batches`. It serves both
    engines: the NumPy ones mirror PyTorch's names (loss.backward, optimizer.zero_grad, ...)."""
    count = itertools.count()

    def step():
        ids = batches[next(count) % len(batches)]
        loss = model.loss(ids[:, :-1], ids[:, -1])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss

    return step


def steppers(batch, context, n_embd, hidden, n_batches=32):
    """A step function for each engine, cycling through the same random batches (one batch
    over and over would be memorised, which is not what training does), after checking that
    one step of each gives the same loss and gradients."""
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, VOCAB, (batch, context + 1)) for _ in range(n_batches)]
    ours = CharMLP(VOCAB, context, n_embd, hidden, seed=0)
    theirs = TorchCharMLP(ours)
    opt = AdamW(ours.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.0)
    opt_t = torch.optim.AdamW(theirs.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.0)
    numpy_step = training_step(ours, opt, batches)
    torch_step = training_step(theirs, opt_t, [torch.from_numpy(ids) for ids in batches])
    loss, loss_t = numpy_step(), torch_step()
    np.testing.assert_allclose(loss.item(), loss_t.item(), rtol=1e-5)
    ours_params = dict(ours.named_parameters())
    for name, p in theirs.named_parameters():
        np.testing.assert_allclose(ours_params[name].grad, p.grad.numpy(), rtol=1e-3, atol=1e-6,
                                   err_msg=name)
    return numpy_step, torch_step


def median_ms(fn, min_run_time):
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def scatter_add_row(batch, context, n_embd, min_run_time):
    """The embedding backward at a training shape: np.add.at against functional.embedding's."""
    rng = np.random.default_rng(0)
    weight = Tensor(rng.standard_normal((VOCAB, n_embd)).astype(np.float32), requires_grad=True)
    ids = rng.integers(0, VOCAB, (batch, context))
    upstream = rng.standard_normal((batch, context, n_embd)).astype(np.float32)
    out = F.embedding(weight, ids)

    def add_at():
        grad = np.zeros((VOCAB, n_embd), np.float32)
        np.add.at(grad, ids, upstream)
        return grad

    np.testing.assert_allclose(out._backward(upstream)[0], add_at(), rtol=1e-4, atol=1e-5)
    return {"ids": batch * context, "vocab": VOCAB, "n_embd": n_embd,
            "np_add_at_us": median_ms(add_at, min_run_time) * 1e3,
            "bincount_us": median_ms(lambda: out._backward(upstream), min_run_time) * 1e3}


def markdown(result):
    m = result["machine"]
    lines = ["| batch | context | n_embd | hidden | NumPy ms/step | PyTorch ms/step | ratio |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['batch']} | {r['context']} | {r['n_embd']} | {r['hidden']} | "
              f"{r['numpy_ms']:.3f} | {r['torch_ms']:.3f} | {r['ratio']:.2f} |" for r in result["steps"]]
    s = result["scatter_add"]
    lines += ["", f"Embedding backward ({s['ids']} ids, {s['vocab']} x {s['n_embd']} table): "
              f"np.add.at {s['np_add_at_us']:.1f} us, np.bincount {s['bincount_us']:.1f} us "
              f"({s['np_add_at_us'] / s['bincount_us']:.1f}x faster).", "",
              f"Target: NumPy <= {TARGET:g}x PyTorch at every shape: "
              f"{'met' if result['met'] else 'NOT met'}.", "",
              f"{m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), "
              f"numpy {m['numpy']}, commit {m['git_commit']}, {m['date']}: `{m['command']}`"]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--min-run-time", type=float, default=2.0,
                        help="seconds of timing per engine and shape")
    script.add_out_flag(parser)
    args = parser.parse_args(argv)
    out = script.check_out(args.out)
    rows = []
    for batch, context, n_embd, hidden in SHAPES:
        numpy_step, torch_step = steppers(batch, context, n_embd, hidden)
        numpy_ms = median_ms(numpy_step, args.min_run_time)
        torch_ms = median_ms(torch_step, args.min_run_time)
        rows.append({"batch": batch, "context": context, "n_embd": n_embd, "hidden": hidden,
                     "numpy_ms": numpy_ms, "torch_ms": torch_ms, "ratio": numpy_ms / torch_ms})
        print(rows[-1], flush=True)
    batch, context, n_embd, _ = SHAPES[1]
    result = {"benchmark": "one training step of the character MLP, NumPy engine vs PyTorch",
              "machine": {**machine(), "numpy": np.__version__,
                          "command": "python " + " ".join(sys.argv)},
              "steps": rows, "scatter_add": scatter_add_row(batch, context, n_embd, args.min_run_time),
              "target_ratio": TARGET, "met": all(r["ratio"] <= TARGET for r in rows)}
    report = markdown(result)
    script.write_results(out, {"scratch_step_vs_torch.json": json.dumps(result, indent=2) + "\n",
                               "scratch_step_vs_torch.md": report})
    print(report)


if __name__ == "__main__":
    sys.exit(script.run(main))
