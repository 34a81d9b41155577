"""Every data-parallel strategy, on 2 ranks (gloo, CPU) and some on 4, against one process:
the same global batch, the same seed, the parameters and AdamW state after STEPS optimizer
steps, and the bytes each step sent against the formulas of comm.py.

All the runs of one world size happen in one group of ranks (starting processes is what
costs here), then each test reads its results.
"""

import math

import pytest
import torch
from ranks import fresh_model, run_ranks, tiny_config, train_cases, train_frozen, train_tiny

from mini_llm.model import GPT
from mini_llm.parallel import DATA_PARALLEL

# Tensor and pipeline parallel have their own files (test_parallel_tp.py, test_parallel_pp.py).
CASES_2 = [(name, family, accum, ()) for name in DATA_PARALLEL
           for family in ("gpt2", "llama") for accum in (1, 4)]
CASES_2 += [("ddp", family, 4, (("bucket_bytes", 0),)) for family in ("gpt2", "llama")]
# Stopped after one step and resumed from the checkpoint (sharded optimizer state saved whole,
# then split again): the same parameters as a run that never stopped.
CASES_2 += [(name, "llama", 1, (("resume", True),)) for name in ("ddp", "zero2", "fsdp", "fsdp-torch")]
CASES_4 = [(name, "llama", 4, ()) for name in ("ddp", "zero2", "fsdp")]

# A plain one-process run sums the gradient over B rows in one matmul; N ranks sum B/N rows
# each, then add the N sums: float32 rounds differently (~1e-7 relative), and Adam's first
# steps, which divide by sqrt(v), pass that on. An update is lr ~ 1e-3 per step: the tolerance
# is 500x smaller. One process with --split-batch N runs the ranks' slices: see the bitwise test.
ATOL = 2e-6


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """{(family, grad_accum, split_batch): checkpoint} of one process."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("single")
    return {(family, accum, split): train_tiny(out / f"{family}-{accum}-{split}", family, accum,
                                               split_batch=split)[0]
            for family in ("gpt2", "llama") for accum in (1, 4) for split in (1, 2)
            if split == 1 or accum == 1}


def ranks_results(tmp_path_factory, size, cases):
    out = tmp_path_factory.mktemp(f"ranks{size}")
    run_ranks(train_cases, size, out, cases, timeout=300)
    return torch.load(out / "results.pt")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    return ranks_results(tmp_path_factory, 2, CASES_2)


@pytest.fixture(scope="module")
def four_ranks(tmp_path_factory):
    return ranks_results(tmp_path_factory, 4, CASES_4)


def assert_same_run(result, single, atol):
    model_state, optimizer_state = result[:2]
    for name, value in single.model_state.items():
        torch.testing.assert_close(model_state[name], value, rtol=0, atol=atol, msg=name)
    assert optimizer_state["param_groups"] == single.optimizer_state["param_groups"]
    for index, state in single.optimizer_state["state"].items():
        for name, value in state.items():
            torch.testing.assert_close(optimizer_state["state"][index][name], value, rtol=0,
                                       atol=atol, msg=f"{index}.{name}")


@pytest.mark.parametrize("case", CASES_2, ids=lambda c: f"{c[0]}-{c[1]}-accum{c[2]}{''.join('-' + k for k, _ in c[3])}")
def test_two_ranks_equal_one_process(two_ranks, one_process, case):
    assert_same_run(two_ranks[case], one_process[case[1], case[2], 1], ATOL)


@pytest.mark.parametrize("case", [c for c in CASES_2 if c[2] == 1],
                         ids=lambda c: f"{c[0]}-{c[1]}{''.join('-' + k for k, _ in c[3])}")
def test_two_ranks_equal_one_process_of_their_slices_to_the_bit(two_ranks, one_process, case):
    """One process with split_batch=2 runs each batch as the two ranks' slices, g0/2 + g1/2,
    where the ranks make (g0 + g1)/2, whichever collective adds the two (all-reduce, or
    reduce-scatter then all-gather): the same float32 number (halving is exact, a + b = b + a).
    The clipping norm's squares are summed in float64 (optim.square_sum), so sharded ranks clip
    by one process's factor, and AdamW works elementwise: every strategy, the checkpoint and
    its resumed run included, ends with one process's parameters and AdamW state, to the bit."""
    model_state, optimizer_state = two_ranks[case][:2]
    single = one_process[case[1], 1, 2]
    assert model_state.keys() == single.model_state.keys()
    for name, value in single.model_state.items():
        assert torch.equal(model_state[name], value), name
    assert optimizer_state["param_groups"] == single.optimizer_state["param_groups"]
    for index, state in single.optimizer_state["state"].items():
        for name, value in state.items():
            assert torch.equal(optimizer_state["state"][index][name], value), f"{index}.{name}"


@pytest.mark.parametrize("case", CASES_4, ids=lambda c: f"{c[0]}-{c[1]}-accum{c[2]}")
def test_four_ranks_equal_one_process(four_ranks, one_process, case):
    assert_same_run(four_ranks[case], one_process[case[1], case[2], 1], ATOL)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_bitwise_with_accumulation_where_the_sums_are_the_same(two_ranks, family):
    """With 4 micro-batches ddp sums each rank's 4 gradients, then the ranks' totals:
    (a1 + a2 + a3 + a4) + (b1 + ... + b4); one process sums in another order, so the runs
    agree within ATOL only. torch's DDP and ZeRO-1 make ddp's sums and equal it to the bit;
    ZeRO-2 and FSDP reduce every micro-batch, (a1 + b1) + (a2 + b2) + ..., another order."""
    ddp = two_ranks["ddp", family, 4, ()][0]
    for name in ("ddp-torch", "zero1"):
        other = two_ranks[name, family, 4, ()][0]
        assert all(torch.equal(other[k], ddp[k]) for k in ddp), name


def padded_bytes(numel, n):
    return math.ceil(numel / n) * n * 4


def expected_bytes(name, family, accum, n):
    """Bytes one rank sends per optimizer step, from the parameter counts alone."""
    model = GPT(tiny_config(family))
    params = sum(p.numel() for p in model.parameters())  # the tied embedding once
    ring = (n - 1) / n
    if name in ("ddp", "ddp-torch"):
        return 2 * ring * 4 * params  # one all-reduce of every gradient
    if name == "zero1":  # reduce-scatter the gradients, all-gather the parameters
        return 2 * ring * padded_bytes(params, n)
    if name == "zero2":  # one bucket at this size, reduce-scattered every micro-batch
        return (accum + 1) * ring * padded_bytes(params, n)
    blocks = [padded_bytes(sum(p.numel() for p in b.parameters()), n) for b in model.h]
    root = padded_bytes(params - sum(p.numel() for b in model.h for p in b.parameters()), n)
    # fsdp, each micro-batch: gather every unit (forward) and every block again (backward),
    # reduce-scatter every unit's gradients
    return accum * ring * (2 * (root + sum(blocks)) + sum(blocks))


@pytest.mark.parametrize("case", [c for c in CASES_2 if c[0] != "fsdp-torch"],
                         ids=lambda c: f"{c[0]}-{c[1]}-accum{c[2]}{''.join('-' + k for k, _ in c[3])}")
def test_bytes_per_step_two_ranks(two_ranks, case):
    assert two_ranks[case][2] == expected_bytes(*case[:3], 2)


@pytest.mark.parametrize("case", CASES_4, ids=lambda c: f"{c[0]}-{c[1]}-accum{c[2]}")
def test_bytes_per_step_four_ranks(four_ranks, case):
    assert four_ranks[case][2] == expected_bytes(*case[:3], 4)


def test_ddp_reduces_each_gradient_once(two_ranks):
    """The all-reduce payload is the gradient bytes exactly: the tied embedding is not sent
    twice, and no gradient is left out."""
    for family in ("gpt2", "llama"):
        params = sum(p.numel() for p in GPT(tiny_config(family)).parameters())
        for name in ("ddp", "ddp-torch"):
            assert two_ranks[name, family, 1, ()][3] == {"all_reduce": 4 * params}


def test_ddp_leaves_frozen_parameters_out(two_ranks):
    """A parameter without requires_grad gets no gradient: ddp neither waits for it nor sends
    it, and it stays as it was."""
    state, sent = two_ranks["frozen"]
    single, _ = train_frozen()
    for name, value in single.items():
        torch.testing.assert_close(state[name], value, rtol=0, atol=ATOL, msg=name)
    model = fresh_model(tiny_config("gpt2"))
    assert torch.equal(state["wpe.weight"], model.wpe.weight)
    trainable = sum(p.numel() for p in model.parameters()) - model.wpe.weight.numel()
    assert sent == 2 * (2 - 1) / 2 * 4 * trainable
