"""Parallel training (stage 4): one short file per strategy. How a strategy plugs into the
training loop: strategy.py. The process groups: groups.py. Bytes sent: comm.py. The launcher
(`mini-llm train --nproc-per-node N --parallel NAME`): launch.py."""

STRATEGY_NAMES = ("ddp", "ddp-torch", "zero1", "zero2", "fsdp", "fsdp-torch")


def make_strategy(name, world, global_batch=None):
    """The Strategy called `name` for this rank's World."""
    from .ddp import DDP
    from .fsdp import FSDP
    from .torch_baselines import FSDPTorch, TorchDDP
    from .zero import ZeRO

    strategies = {"ddp": DDP, "ddp-torch": TorchDDP, "zero1": lambda *a: ZeRO(*a, stage=1),
                  "zero2": lambda *a: ZeRO(*a, stage=2), "fsdp": FSDP, "fsdp-torch": FSDPTorch}
    return strategies[name](world, global_batch)
