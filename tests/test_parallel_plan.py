"""The planner (mini_llm/parallel/plan.py) against what the gloo runs hold and send: the bytes
of every collective per step and the bytes of parameters, gradients and optimizer state, per
rank, at 1, 2 and 4 ranks, for tensor and pipeline parallel, on both block families."""

import pytest
import torch
from ranks import FAMILIES, fresh_model, random_tokens, run_ranks, settings, tiny_config, train, world

from mini_llm.errors import ConfigError
from mini_llm.parallel import comm
from mini_llm.parallel.plan import MODELS, Layout, Run, Shape, rank_plan
from mini_llm.parallel.pp import Pipeline
from mini_llm.parallel.tp import TensorParallel

KINDS = {"all_reduce": ("tp all-reduce", "pp tied embedding"), "send": ("pp send",)}


def nbytes(tensors):
    return sum(t.numel() * t.element_size() for t in tensors)


def measure(family, strategy, grad_accum=2):
    """One step of `strategy` (None: one process): bytes sent per collective kind, and the
    bytes of the parameters, their gradients and AdamW's state this rank holds."""
    config, cfg = tiny_config(family, n_layer=4), settings(grad_accum, iters=1)
    task = random_tokens(config, cfg)
    ranks = {"tp": lambda: TensorParallel(world()), "pp": lambda: Pipeline(world()), None: lambda: None}[strategy]()
    model = ranks.wrap(fresh_model(config)) if ranks else fresh_model(config)
    comm.counter.start_step()
    _, optimizer = train(model, cfg, task, ranks)
    comm.counter.end_step()
    states = [t for s in optimizer.state.values() for t in s.values()]
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # the gradients a step holds: one per parameter
    return {"sent": comm.counter.last_step, "payload": comm.counter.last_payload,
            "params": nbytes(model.parameters()), "grads": nbytes(p.grad for p in model.parameters()),
            "optimizer": nbytes(states)}


def planned(family, layout, stage, grad_accum=2):
    config, cfg = tiny_config(family, n_layer=4), settings(grad_accum)
    run = Run(cfg.batch_size, config.block_size, grad_accum, act_bytes=4)
    return rank_plan(Shape.of(config), layout, run, stage)


def check(measured, plan):
    assert measured["sent"] == round(plan.sent)
    assert measured["params"] + measured["optimizer"] == plan.params + plan.optimizer
    assert measured["grads"] == plan.grads


def both(family):
    return measure(family, "tp"), measure(family, "pp")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_plan_equals_one_process(family):
    check(measure(family, None), planned(family, Layout("ddp", 1), 0))


@pytest.mark.parametrize("world_size", [2, 4])
def test_plan_equals_tp_and_pp_runs(world_size):
    results = run_ranks(both, world_size, "gpt2")
    for rank, (tp, pp) in enumerate(results):
        check(tp, planned("gpt2", Layout("ddp", 1, t=world_size), 0))
        check(pp, planned("gpt2", Layout("ddp", 1, p=world_size), rank))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_parameter_count_equals_the_model(family):
    config = tiny_config(family)
    assert Shape.of(config).params() == fresh_model(config).num_params(non_embedding=False)


def test_llama3_sizes():
    assert round(MODELS["llama3-8b"].params() / 1e9, 2) == 8.03
    assert round(MODELS["llama3-70b"].params() / 1e9, 1) == 70.6


def test_plan_refuses_a_degree_that_does_not_divide():
    run = Run(1, 16, 1)
    with pytest.raises(ConfigError, match="tensor parallel 3 does not divide the heads"):
        rank_plan(Shape.of(tiny_config("gpt2")), Layout("ddp", 1, t=3), run)
    with pytest.raises(ConfigError, match="pipeline parallel 3 does not divide the layers"):
        rank_plan(Shape.of(tiny_config("gpt2")), Layout("ddp", 1, p=3), run)
