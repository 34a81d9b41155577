"""The character MLP language model: its gradients against the same model in PyTorch, its
training loop (the loss falls), sampling, and `mini-llm scratch train` with good and bad input."""

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

from mini_llm.cli import main
from mini_llm.scratch.char_mlp import CharMLP, sample, windows
from mini_llm.scratch.gradcheck import relative_error
from mini_llm.scratch.train import ScratchTrainConfig, train_char_mlp


def test_windows_pair_each_context_with_the_next_character():
    pairs = windows(np.arange(10, dtype=np.uint16), context=3)
    assert pairs.shape == (7, 4)
    assert pairs[0].tolist() == [0, 1, 2, 3] and pairs[-1].tolist() == [6, 7, 8, 9]


def test_loss_and_gradients_match_the_same_model_in_pytorch():
    model = CharMLP(vocab_size=11, context=3, n_embd=4, hidden=16, seed=0, dtype=np.float64)
    weights = {name: torch.tensor(p.data, requires_grad=True) for name, p in model.named_parameters()}
    ids = np.random.default_rng(0).integers(0, 11, (6, 4))

    loss = model.loss(ids[:, :3], ids[:, 3])
    loss.backward()
    w = weights
    hidden = torch.tanh(TF.embedding(torch.tensor(ids[:, :3]), w["wte.weight"]).reshape(6, -1)
                        @ w["mlp.c_fc.weight"].T + w["mlp.c_fc.bias"])
    loss_t = TF.cross_entropy(hidden @ w["mlp.c_proj.weight"].T + w["mlp.c_proj.bias"],
                              torch.tensor(ids[:, 3]))
    loss_t.backward()
    assert loss.item() == pytest.approx(loss_t.item(), rel=1e-12)
    for name, p in model.named_parameters():
        assert relative_error(p.grad, w[name].grad.numpy()) < 1e-10, name


def test_training_lowers_the_loss_and_samples(corpus, capsys):
    cfg = ScratchTrainConfig(data=str(corpus), context=4, n_embd=8, hidden=64, batch_size=32,
                             max_iters=150, eval_interval=50, eval_batches=2, sample_tokens=40)
    summary = train_char_mlp(cfg)
    printed = capsys.readouterr().out
    evals = [float(line.rsplit(" ", 1)[1]) for line in printed.splitlines() if ", val loss" in line]
    assert len(evals) == 4  # steps 0, 50, 100, 150
    assert evals[-1] < evals[0] - 1.0  # from ~log(vocabulary) to well below it
    assert summary["val_loss"] < evals[0] - 1.0
    assert "sample:" in printed and "nats/char" in printed


def test_sampling_is_seeded_and_stays_in_the_vocabulary():
    model = CharMLP(vocab_size=9, context=3, n_embd=4, hidden=8)
    a = sample(model, 0, 25, np.random.default_rng(5))
    b = sample(model, 0, 25, np.random.default_rng(5))
    assert a == b and len(a) == 25 and set(a) <= set(range(9))


def test_the_cli_trains(corpus, capsys):
    status = main(["scratch", "train", "--data", str(corpus), "--max-iters", "20",
                   "--hidden", "32", "--eval-interval", "10", "--sample-tokens", "20"])
    out = capsys.readouterr().out
    assert status == 0
    assert "step 20: train loss" in out and "val loss over the whole validation split" in out


def test_the_cli_reports_bad_input_in_one_line(corpus, tmp_path, capsys):
    for argv, message in [
        (["--context", "0"], "context must be >= 1, got 0"),
        (["--dtype", "float16"], "dtype must be float32 or float64, got 'float16'"),
        (["--data", str(tmp_path / "missing.txt")], "missing.txt does not exist"),
    ]:
        assert main(["scratch", "train", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err, err
