"""From-scratch AdamW, schedule and clipping against PyTorch's."""

import math

import pytest
import torch

from mini_llm.optim import AdamW, clip_grad_norm, lr_at


def test_adamw_matches_torch():
    torch.manual_seed(0)
    ours = [torch.randn(5, 3, dtype=torch.float64, requires_grad=True), torch.randn(7, dtype=torch.float64, requires_grad=True)]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    initial = [p.detach().clone() for p in ours]

    def groups(ps):  # decay on the matrix only, as the model does
        return [{"params": [ps[0]], "weight_decay": 0.1}, {"params": [ps[1]], "weight_decay": 0.0}]

    a = AdamW(groups(ours), lr=3e-3, betas=(0.9, 0.99))
    b = torch.optim.AdamW(groups(theirs), lr=3e-3, betas=(0.9, 0.99), eps=1e-8)
    for step in range(25):
        grads = [torch.randn_like(p) for p in ours]
        for opt, ps in ((a, ours), (b, theirs)):
            for p, g in zip(ps, grads):
                p.grad = g.clone()
            for group in opt.param_groups:
                group["lr"] = 3e-3 * (1 - step / 50)  # the schedule changes lr between steps
            opt.step()
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)
    assert not any(torch.allclose(p, q) for p, q in zip(ours, initial))  # the steps did move them


def test_adamw_state_round_trips_through_state_dict():
    p = torch.randn(4, requires_grad=True)
    opt = AdamW([p], lr=1e-2)
    p.grad = torch.randn(4)
    opt.step()
    clone = AdamW([p], lr=1e-2)
    clone.load_state_dict(opt.state_dict())
    assert clone.state[p]["step"].item() == 1
    torch.testing.assert_close(clone.state[p]["exp_avg"], opt.state[p]["exp_avg"])


def test_schedule_warms_up_then_follows_a_half_cosine():
    lr, min_lr, warmup, decay = 1e-3, 1e-4, 10, 110
    values = [lr_at(it, lr, min_lr, warmup, decay) for it in range(130)]
    assert values[0] == pytest.approx(lr / 11) and values[9] == pytest.approx(lr * 10 / 11)
    assert values[10] == pytest.approx(lr)  # the peak, where the cosine starts
    assert values[60] == pytest.approx((lr + min_lr) / 2)  # half way down the cosine
    assert all(x >= y for x, y in zip(values[10:], values[11:]))  # never rises after the peak
    assert values[110:] == [min_lr] * 20


@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_clip_grad_norm_matches_torch(max_norm):
    ours = [torch.randn(3, 4, requires_grad=True), torch.randn(5, requires_grad=True)]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    for p, q in zip(ours, theirs):
        p.grad = torch.randn_like(p) * 3
        q.grad = p.grad.clone()
    norm = clip_grad_norm(ours, max_norm)
    expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm)
    torch.testing.assert_close(norm, expected)
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p.grad, q.grad)
    total = math.sqrt(sum((p.grad ** 2).sum().item() for p in ours))
    assert total == pytest.approx(min(max_norm, expected.item()), rel=1e-5)


def test_adamw_param_groups_round_trip_through_a_checkpoint(tmp_path):
    """Every tensor of the state and every setting of param_groups, types included (betas is a
    tuple, which JSON alone would give back as a list)."""
    from mini_llm.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = AdamW([{"params": [model.weight], "weight_decay": 0.1},
                 {"params": [model.bias], "weight_decay": 0.0}], lr=3e-3, betas=(0.9, 0.95))
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    save_checkpoint(tmp_path / "c.safetensors", model, opt, {"iter": 1, "model_config": {},
                                                               "tokenizer": {}, "train_config": {}})
    restored = load_checkpoint(tmp_path / "c.safetensors").optimizer_state
    expected = opt.state_dict()
    assert restored["param_groups"] == expected["param_groups"]
    assert [type(g["betas"]) for g in restored["param_groups"]] == [tuple, tuple]
    assert restored["state"].keys() == expected["state"].keys()
    for index, state in expected["state"].items():
        assert state.keys() == restored["state"][index].keys()
        for name, value in state.items():
            assert torch.equal(value, restored["state"][index][name]), (index, name)
    clone = AdamW([{"params": [model.weight]}, {"params": [model.bias]}])
    clone.load_state_dict(restored)
    assert clone.state_dict()["param_groups"] == expected["param_groups"]
