"""Pipeline parallel (mini_llm/parallel/pp.py) against one process, on gloo ranks. Its bytes
per step: tests/test_parallel_plan.py.

Bitwise: a stage runs the same ops on the same micro-batches as one process, its backwards in
micro-batch order, and the gradient norm is summed in one process's order. The one exception is
the tied embedding with several micro-batches: one process sums its embedding and head
gradients per micro-batch, the pipeline per stage, then across the two (another order of the
same float32 additions). These ulps then spread to every tensor, and Adam, which divides each
gradient entry by its own size, turns the noise on near-zero gradient entries (the keys' bias
has a zero gradient in exact arithmetic) into a fraction of lr: there, within 1e-2 x lr after
K steps, as for tensor parallel (tests/test_parallel_tp.py).
"""

import pytest
from ranks import (FAMILIES, checkpoint_diff, fresh_model, random_tokens, resumed_equals_uninterrupted, run_ranks,
                   settings, tiny_config, train, world)

from mini_llm.errors import ConfigError
from mini_llm.parallel.pp import SCHEDULES, Pipeline, check_divides

TIED_ATOL_LR = 1e-2


def pp_vs_one_process(family, grad_accum, schedule, n_layer):
    """K steps of one process and of the pipeline from the same weights: for every parameter
    this stage holds, the largest difference in units of lr; and whether the losses are equal."""
    config, cfg = tiny_config(family, n_layer=n_layer), settings(grad_accum)
    task = random_tokens(config, cfg)
    reference = fresh_model(config)
    ref_losses, ref_optimizer = train(reference, cfg, task)
    ranks = Pipeline(world(), schedule=schedule)
    model = ranks.wrap(fresh_model(config))
    losses, optimizer = train(model, cfg, task, ranks)  # the last stage's, broadcast by ranks.mean
    ref = dict(reference.named_parameters())
    diffs = {name: float((p.detach() - ref[name].detach()).abs().max()) / cfg.lr
             for name, p in ranks.owned(model).items()}
    snapshots = ranks.for_checkpoint(model, optimizer)
    if ranks.is_main:  # the gathered checkpoint: every tensor of the model and of AdamW
        params, adam = checkpoint_diff(*(s.state_dict() for s in snapshots), reference, ref_optimizer)
        diffs["checkpoint"], diffs["checkpoint adam"] = params / cfg.lr, adam
    evaluation = model(*task.batch(99, 0))[1]  # the whole model's forward, through the stages
    diffs["evaluation"] = float((evaluation - reference(*task.batch(99, 0))[1]).abs()) / cfg.lr
    return diffs, [float(ranks.mean(x)) for x in losses] == ref_losses


def all_cases(world):
    return {(f, a, s): pp_vs_one_process(f, a, s, 2 * world)
            for f in ("gpt2", "llama") for a in (1, 4) for s in SCHEDULES}


def check(results):
    """Every case on every rank: equal losses, parameters within their bound. Returns
    {family: names of the parameters the ranks hold together}."""
    held = {}
    for rank_result in results:
        for (family, grad_accum, schedule), (diffs, losses_equal) in rank_result.items():
            assert losses_equal, (family, grad_accum, schedule)
            tied = FAMILIES[family]["tie_weights"] and grad_accum > 1
            for name, diff in diffs.items():
                bound = TIED_ATOL_LR if tied else 0.0
                assert diff <= bound, (family, grad_accum, schedule, name, diff)
            held.setdefault(family, set()).update(set(diffs) - {"checkpoint", "checkpoint adam", "evaluation"})
    return held


def names(family, n_layer):
    return set(dict(fresh_model(tiny_config(family, n_layer=n_layer)).named_parameters()))


def test_pp_equals_one_process_on_2_ranks():
    held = check(run_ranks(all_cases, 2, 2))
    assert held == {family: names(family, 4) for family in FAMILIES}


def test_pp_equals_one_process_on_4_ranks():
    results = run_ranks(pp_vs_one_process, 4, "gpt2", 4, "1f1b", 8)
    assert check([{("gpt2", 4, "1f1b"): r} for r in results]) == {"gpt2": names("gpt2", 8)}


def pp_resumed_equals_uninterrupted(family, steps=3):
    config, cfg = tiny_config(family, n_layer=4), settings(2, iters=steps)
    return resumed_equals_uninterrupted(lambda: Pipeline(world()), config, cfg, random_tokens(config, cfg), steps)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_pp_resumes_its_checkpoint_to_the_bit(family):
    assert run_ranks(pp_resumed_equals_uninterrupted, 2, family)[0] == (True, True)


@pytest.mark.parametrize("stages,micro", [(4, 4), (4, 2), (2, 8)])
def test_schedules_run_every_micro_batch_once_forward_before_backward(stages, micro):
    for stage in range(stages):
        for name, schedule in SCHEDULES.items():
            order = schedule(micro, stages, stage)
            assert sorted(order) == sorted((k, m) for k in ("forward", "backward") for m in range(micro))
            assert [m for k, m in order if k == "backward"] == list(range(micro))  # grads sum in order
            in_flight = peak = 0
            for kind, m in order:
                assert kind == "backward" or ("backward", m) not in order[:order.index((kind, m))]
                in_flight += 1 if kind == "forward" else -1
                peak = max(peak, in_flight)
            assert peak == (micro if name == "gpipe" else min(micro, stages - stage))


def test_pp_refuses_layers_that_do_not_divide():
    with pytest.raises(ConfigError, match="n_layer 3 is not divisible by 2"):
        check_divides(tiny_config("gpt2", n_layer=3), 2)
    with pytest.raises(ConfigError, match="schedule must be one of"):
        Pipeline(None, schedule="zigzag")
