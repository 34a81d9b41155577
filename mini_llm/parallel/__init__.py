"""Parallel training (stage 4): one short file per strategy. How a strategy plugs into the
training loop: strategy.py. The process groups: groups.py. Bytes sent: comm.py. The launcher
(`mini-llm train --nproc-per-node N --parallel NAME`): launch.py."""

STRATEGY_NAMES = ("ddp", "ddp-torch", "zero1", "zero2", "fsdp", "fsdp-torch")


def make_strategy(name, world, global_batch=None, **options):
    """The Strategy called `name` for this rank's World; options go to its constructor
    (e.g. bucket_bytes for ddp and zero2)."""
    from .ddp import DDP
    from .fsdp import FSDP
    from .torch_baselines import FSDPTorch, TorchDDP
    from .zero import ZeRO

    strategies = {"ddp": DDP, "ddp-torch": TorchDDP, "zero1": ZeRO, "zero2": ZeRO, "fsdp": FSDP,
                  "fsdp-torch": FSDPTorch}
    if name.startswith("zero"):
        options["stage"] = int(name[-1])
    return strategies[name](world, global_batch, **options)
