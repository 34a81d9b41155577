"""triton.autotune with one switch for the GPU test grid: MINI_LLM_AUTOTUNE=first.

Autotuning compiles and times every candidate config the first time a kernel meets a new key.
That is what a benchmark or a training run wants, and what a test does not: the GPU tests check
results over ~1250 cases, and tuning each key's 5-9 configs turns their ~250 compiles into
~650 plus thousands of timed runs (bench/gpu_run.sh has minutes). With MINI_LLM_AUTOTUNE=first
each key runs one config: the first, or for a kernel that prunes its configs per call (its
early_config_prune: e.g. an int4 block must hold whole groups) the first that the prune keeps,
so every kernel still runs a config it could pick.
"""

import os

import triton

KNOB = "MINI_LLM_AUTOTUNE"


def first_only():
    """True when MINI_LLM_AUTOTUNE=first (read at import: the decorators are built then)."""
    mode = os.environ.get(KNOB, "all")
    if mode not in ("all", "first"):
        raise ValueError(f"{KNOB}={mode!r}: choose all (the default) or first")
    return mode == "first"


def autotune(configs, key, prune=None, **kwargs):
    """triton.autotune(configs, key, prune_configs_by={"early_config_prune": prune}, **kwargs),
    narrowed to one config per key under MINI_LLM_AUTOTUNE=first: the first of `configs`, or,
    when `prune` is given, the first config it keeps for the call. (With a single config Triton
    times nothing; with a single pruned one, Triton 3.6 still times it once per key, newer
    versions do not.)"""
    if first_only():
        if prune is None:
            configs = configs[:1]
        else:
            prune = _first_kept(prune)
    pruning = {"prune_configs_by": {"early_config_prune": prune}} if prune else {}
    return triton.autotune(configs, key=key, **pruning, **kwargs)


def _first_kept(prune):
    def first(configs, named_args, **kwargs):
        return prune(configs, named_args, **kwargs)[:1]
    return first
