"""What each collective sends, in one place: the byte counters (comm.py) apply these formulas
to the tensors they send, and the planner (plan.py) applies them to a model's shapes, so a
measured count and a planned one can only differ by which tensors are sent, never by how a
collective is costed.

Per rank, for a tensor of n bytes on N ranks, with the ring algorithms that NCCL and gloo use
for large tensors:

  all-reduce       2 (N-1)/N n   a reduce-scatter, then an all-gather, around the ring
  reduce-scatter     (N-1)/N n   n: the full input; each rank ends with its n/N, reduced
  all-gather         (N-1)/N n   n: the full output; each rank starts with its n/N
  send                       n   point to point: a pipeline stage to the next

Time (the alpha-beta model): a ring collective takes 2 (N-1) or (N-1) steps, each paying the
link's latency alpha once, and moves the bytes above at the link's bandwidth beta:
  t = steps * alpha + bytes / beta.
"""


def all_reduce_bytes(n, ranks):
    return 2 * (ranks - 1) / ranks * n


def all_gather_bytes(n, ranks):
    return (ranks - 1) / ranks * n


reduce_scatter_bytes = all_gather_bytes


def ring_steps(kind, ranks):
    """How many latency-bound hops a ring collective of `kind` takes (send: one)."""
    if kind == "send" or ranks == 1:
        return 1 if kind == "send" else 0
    return 2 * (ranks - 1) if kind == "all_reduce" else ranks - 1


def collective_seconds(kind, n_bytes_sent, ranks, latency_s, bandwidth_bytes_s):
    """The alpha-beta time of one collective that sends n_bytes_sent per rank."""
    return ring_steps(kind, ranks) * latency_s + n_bytes_sent / bandwidth_bytes_s
