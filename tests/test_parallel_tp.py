"""Tensor parallel (mini_llm/parallel/tp.py) against one process and against torch's DTensor
tensor parallel, on gloo ranks. Its bytes per step: tests/test_parallel_plan.py.

Not bitwise: the row-parallel all-reduce adds N partial matmuls where one process adds the same
products inside one matmul, in another order, so sums round differently (a few float32 ulps).
  gradients of one step: within 1e-5 of each tensor's largest entry (RTOL);
  parameters after K AdamW steps: within 3e-2 x lr of each other (ATOL_LR). Adam divides each
    gradient entry by its own running size, so an entry whose gradient is near zero moves by a
    fraction of lr that its rounding noise decides: the keys' bias (a zero gradient in exact
    arithmetic: the softmax cancels it), the embedding rows of tokens absent from the batch
    (only the softmax's denominator reaches them). Measured: up to 1.35e-2 x lr (wte, 3 steps).
  AdamW's state (m, v) in the gathered checkpoint: within 2e-3 of each tensor's largest entry
    (measured up to 5e-4), for the same reason.
"""

import pytest
import torch
import torch.distributed as dist
from ranks import (checkpoint_diff, fresh_model, random_tokens, resumed_equals_uninterrupted, run_ranks, settings,
                   tiny_config, train, world)

from mini_llm.errors import ConfigError
from mini_llm.generate import generate
from mini_llm.parallel.tp import TensorParallel, check_divides, sharded_params, unshard

RTOL, ATOL_LR, ADAM_RTOL = 1e-5, 3e-2, 2e-3


def max_rel_diff(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def full_grads(model):
    sharded = sharded_params(model)
    return {name: unshard(p.grad, *sharded[p], None) if p in sharded else p.grad
            for name, p in model.named_parameters()}


def worst(ours, reference, diff):
    return max(diff(ours[name], reference[name]) for name in reference)


def tp_vs_one_process(family, grad_accum):
    """One process and tensor parallel from the same weights: the largest relative difference
    of the gradients of one micro-batch; after K steps of the shared loop, the largest
    difference of the checkpoint (every parameter and AdamW state tensor, gathered) in units of
    lr; and of the losses."""
    config, cfg = tiny_config(family), settings(grad_accum)
    task = random_tokens(config, cfg)
    reference, ranks = fresh_model(config), TensorParallel(world())
    model = ranks.wrap(fresh_model(config))
    for m in (reference, model):
        m(*task.batch(0, 0))[1].backward()
    grads = worst(full_grads(model), {n: p.grad for n, p in reference.named_parameters()}, max_rel_diff)
    for m in (reference, model):
        m.zero_grad(set_to_none=True)
    ref_losses, ref_optimizer = train(reference, cfg, task)
    losses, optimizer = train(model, cfg, task, ranks)
    prompt = task.batch(99, 0)[0][:1, :4]  # greedy decoding with the KV cache: the same tokens
    assert torch.equal(*(generate(m, prompt, 8, temperature=0) for m in (model, reference)))
    model_state, optimizer_state = (s.state_dict() for s in ranks.for_checkpoint(model, optimizer))
    params, adam = checkpoint_diff(model_state, optimizer_state, reference, ref_optimizer)
    return grads, params / cfg.lr, adam, max_rel_diff(torch.tensor(losses), torch.tensor(ref_losses))


def all_cases():
    return {(f, a): tp_vs_one_process(f, a) for f in ("gpt2", "llama") for a in (1, 4)}


def test_tp_equals_one_process_on_2_ranks():
    results = run_ranks(all_cases, 2)
    for case, (grads, params, adam, losses) in results[0].items():
        assert grads < RTOL and params < ATOL_LR and adam < ADAM_RTOL and losses < RTOL, \
            (case, grads, params, adam, losses)
    assert results[0] == results[1]  # every rank holds the same replicated and gathered model


def test_tp_equals_one_process_on_4_ranks():
    (grads, params, adam, losses), *_ = run_ranks(tp_vs_one_process, 4, "llama", 1)
    assert grads < RTOL and params < ATOL_LR and adam < ADAM_RTOL and losses < RTOL


def tp_resumed_equals_uninterrupted(family, steps=3):
    config, cfg = tiny_config(family), settings(1, iters=steps)
    return resumed_equals_uninterrupted(lambda: TensorParallel(world()), config, cfg, random_tokens(config, cfg), steps)


def test_tp_resumes_its_checkpoint_to_the_bit():
    for rank_result in run_ranks(tp_resumed_equals_uninterrupted, 2, "llama"):
        assert rank_result == (True, True)


def rank_major(weight, parts, ranks):
    """The rows of a packed weight ([q | k | v], or [gate | up]) reordered so that torch's
    ColwiseParallel, which gives rank r the r-th contiguous block, gives each rank its heads'
    q, k and v: [q_0 k_0 v_0 | q_1 k_1 v_1 | ...]."""
    return torch.cat([torch.cat([p.chunk(ranks)[r] for p in weight.chunk(parts)]) for r in range(ranks)])


def dtensor_parallel(model, heads_split_right):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    ranks = dist.get_world_size()
    mesh = init_device_mesh("cpu", (ranks,))
    gate_up = 2 if model.config.mlp == "swiglu" else 1
    with torch.no_grad():
        for block in model.h:
            for linear, parts in ((block.attn.c_attn, 3), (block.mlp.c_fc, gate_up)):
                for p in (linear.weight, linear.bias):
                    if heads_split_right and p is not None:
                        p.copy_(rank_major(p, parts, ranks))
            block.attn.n_head //= ranks
            plan = {"attn.c_attn": ColwiseParallel(), "attn.c_proj": RowwiseParallel(),
                    "mlp.c_fc": ColwiseParallel(), "mlp.c_proj": RowwiseParallel()}
            parallelize_module(block, mesh, plan)
    return model


def ours_vs_dtensor(family):
    """One forward and backward of our tensor parallel and of torch's on the same batch: the
    losses and the local gradient shards; and the loss of torch's with a naive split of the
    packed q|k|v rows (a rank gets q of all heads, or k of some and q of others)."""
    config = tiny_config(family)
    x, y = random_tokens(config, settings(1)).batch(0, 0)
    ours = TensorParallel(world()).wrap(fresh_model(config))
    theirs = dtensor_parallel(fresh_model(config), heads_split_right=True)
    naive = dtensor_parallel(fresh_model(config), heads_split_right=False)
    loss_ours, loss_theirs = ours(x, y)[1], theirs(x, y)[1]
    loss_ours.backward()
    loss_theirs.backward()
    grads = dict(theirs.named_parameters())
    worst = 0.0
    for name, p in ours.named_parameters():
        g = grads[name].grad
        g = g.to_local() if hasattr(g, "to_local") else g
        worst = max(worst, max_rel_diff(p.grad, g))
    return float(loss_ours), float(loss_theirs), float(naive(x, y)[1]), worst


@pytest.mark.parametrize("family", ["gpt2"])
def test_tp_equals_torch_dtensor(family):
    ours, theirs, naive, grad_diff = run_ranks(ours_vs_dtensor, 2, family)[0]
    assert abs(ours - theirs) <= RTOL * abs(theirs)
    assert grad_diff < RTOL
    assert abs(naive - theirs) > 1e-3  # the wrong head boundary: another model


def test_tp_refuses_heads_that_do_not_divide():
    with pytest.raises(ConfigError, match="n_head 3 is not divisible by 2"):
        check_divides(tiny_config("gpt2", n_head=3, n_embd=48), 2)
    with pytest.raises(ConfigError, match="hidden width 30 is not divisible by 4"):
        check_divides(tiny_config("gpt2", mlp_hidden=30), 4)
