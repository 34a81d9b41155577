"""The planner (mini_llm/parallel/plan.py) against what the gloo runs hold and send: the bytes
of every collective per step (and the tensors handed to them, against the formulas written
out from the model's shapes) and the bytes of parameters, gradients and optimizer state, per
rank, at 1, 2 and 4 ranks, for tensor and pipeline parallel, on both block families."""

import pytest
from ranks import FAMILIES, fresh_model, random_tokens, run_ranks, settings, tiny_config, world

from mini_llm.errors import ConfigError
from mini_llm.loop import Run as LoopRun
from mini_llm.loop import SingleProcess, optimizer_step
from mini_llm.optim import AdamW
from mini_llm.parallel import comm
from mini_llm.parallel.plan import DP_KINDS, MODELS, Layout, Run, Shape, rank_plan
from mini_llm.parallel.pp import Pipeline
from mini_llm.parallel.tp import TensorParallel

def nbytes(tensors):
    return sum(t.numel() * t.element_size() for t in tensors)


def measure(family, strategy, grad_accum=2):
    """One step of `strategy` (None: one process): the bytes it sent, and the bytes of the
    parameters, their gradients (a second step's forward and backward) and AdamW's state this
    rank holds."""
    config, cfg = tiny_config(family, n_layer=4), settings(grad_accum, iters=1)
    task = random_tokens(config, cfg)
    make = {"tp": TensorParallel, "pp": Pipeline}.get(strategy)
    ranks = make(world()) if make else SingleProcess()
    model = ranks.wrap(fresh_model(config)) if make else fresh_model(config)
    run = LoopRun(cfg, model, AdamW(model.param_groups(0.1), lr=cfg.lr), None, {}, ranks=ranks)
    comm.counter.start_step()
    optimizer_step(run, task, 0)
    comm.counter.end_step()
    ranks.forward_backward(run, task, 1)
    states = [t for s in run.optimizer.state.values() for t in s.values()]
    return {"sent": comm.counter.last_step, "payload": comm.counter.last_payload,
            "params": nbytes(model.parameters()),
            "grads": nbytes(p.grad for p in model.parameters()), "optimizer": nbytes(states)}


def planned(family, layout, stage, grad_accum=2):
    config, cfg = tiny_config(family, n_layer=4), settings(grad_accum)
    run = Run(cfg.batch_size, config.block_size, grad_accum, act_bytes=4)
    return rank_plan(Shape.of(config), layout, run, stage)


def check(measured, plan):
    assert measured["sent"] == round(plan.sent)
    assert (measured["params"], measured["grads"], measured["optimizer"]) == (plan.params, plan.grads, plan.optimizer)


def both(families):
    return {family: (measure(family, "tp"), measure(family, "pp")) for family in families}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_plan_equals_one_process(family):
    check(measure(family, None), planned(family, Layout("ddp", 1), 0))


def tensors_sent(family, world_size, rank, grad_accum=2):
    """What each collective is handed in one step, written out from the model's shapes:
      tp: per layer and micro-batch, 2 all-reduces of the (B, T, C) activations in the forward
          (g) and 2 of their gradients in the backward (f);
      pp: per micro-batch, each stage but the last sends its (B, T, C) output forward, each but
          the first its input's gradient back; a tied embedding's gradient is all-reduced
          between the first and the last stage once per step."""
    config, cfg = tiny_config(family, n_layer=4), settings(grad_accum)
    activation = cfg.batch_size * config.block_size * config.n_embd * 4
    tp = {"all_reduce": 4 * config.n_layer * grad_accum * activation}
    pp = {"send": grad_accum * activation * ((rank < world_size - 1) + (rank > 0))}
    pp["recv"] = pp["send"]
    if config.tie_weights and rank in (0, world_size - 1):
        pp["all_reduce"] = config.vocab_size * config.n_embd * 4
    return tp, pp


@pytest.mark.parametrize("world_size,families", [(2, list(FAMILIES)), (4, ["gpt2"])])
def test_plan_equals_tp_and_pp_runs(world_size, families):
    for rank, result in enumerate(run_ranks(both, world_size, families)):
        for family, (tp, pp) in result.items():
            assert (tp["payload"], pp["payload"]) == tensors_sent(family, world_size, rank)
            check(tp, planned(family, Layout("ddp", 1, t=world_size), 0))
            check(pp, planned(family, Layout("ddp", 1, p=world_size), rank))


def data_parallel_sent(families, accums):
    """{(family, strategy, grad_accum): (bytes this rank sent in a step, the planner's)} for the
    data-parallel strategies (ddp.py, zero.py, fsdp.py), micro-batches of 2 per rank."""
    from mini_llm.parallel import make_strategy

    out, ranks = {}, world()
    for family in families:
        for kind in DP_KINDS:
            for grad_accum in accums:
                config, cfg = tiny_config(family, n_layer=4), settings(grad_accum, batch_size=2 * ranks.size)
                strategy = make_strategy(kind, ranks, cfg.batch_size * grad_accum)
                model = fresh_model(config)
                step_model = strategy.wrap(model)
                optimizer = strategy.optimizer(model.param_groups(0.1), lambda groups: AdamW(groups, lr=cfg.lr))
                run = LoopRun(cfg, model, optimizer, None, {}, step_model=step_model, ranks=strategy)
                optimizer_step(run, random_tokens(config, cfg), 0)
                plan = rank_plan(Shape.of(config), Layout(kind, ranks.size), Run(2, config.block_size, grad_accum, 4))
                out[family, kind, grad_accum] = comm.counter.last_step, round(plan.sent)
    return out


@pytest.mark.parametrize("world_size,families,accums", [(2, list(FAMILIES), [1, 2]), (4, ["gpt2"], [2])])
def test_plan_equals_data_parallel_runs(world_size, families, accums):
    for result in run_ranks(data_parallel_sent, world_size, families, accums):
        for case, (measured, planned_bytes) in result.items():
            assert measured == planned_bytes, case


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
