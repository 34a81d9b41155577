"""Checkpoints: one safetensors file holding the weights, the optimizer state and, as JSON
metadata, the model config, the tokenizer and where training stopped.

safetensors stores raw tensors and strings only, so loading a checkpoint never runs code from
it (a pickle, as torch.save writes, can). The file is written beside its final name and
renamed into place, so a run killed mid-save leaves the previous checkpoint intact. Its
metadata carries a sha256 of the tensors, checked on load: damaged bytes under an intact header
(a bad disk, a torn copy) are an error, not a model that loads and then samples garbage.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from .errors import CheckpointError, ConfigError
from .files import atomic_write_bytes
from .model import GPT, GPTConfig
from .tokenizer import tokenizer_from_dict

FORMAT = "mini-llm/1"
FILE_NAME = "ckpt.safetensors"


@dataclass
class Checkpoint:
    model_state: dict
    optimizer_state: dict | None
    meta: dict  # model_config, tokenizer, iter, train_config

    @property
    def config(self):
        return GPTConfig.from_dict(self.meta["model_config"])

    @property
    def tokenizer(self):
        return tokenizer_from_dict(self.meta["tokenizer"])


def save_checkpoint(path, model, optimizer, meta):
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    scalars = {}  # optimizer state that is not a tensor, by parameter index
    if optimizer is not None:
        opt = optimizer.state_dict()
        for index, state in opt["state"].items():
            for name, value in state.items():
                if torch.is_tensor(value):
                    tensors[f"optim.{index}.{name}"] = value.detach().cpu().contiguous()
                else:
                    scalars.setdefault(str(index), {})[name] = value
    metadata = {"format": FORMAT, "meta": json.dumps(meta), "sha256": tensors_sha256(tensors)}
    if optimizer is not None:
        metadata["optim_groups"] = json.dumps(_tag_tuples(opt["param_groups"]))
        metadata["optim_scalars"] = json.dumps(scalars)
    atomic_write_bytes(path, safetensors_bytes(tensors, metadata))


def resolve_path(path):
    """Accept the checkpoint file or the run folder that holds it."""
    path = Path(path)
    return path / FILE_NAME if path.is_dir() else path


def load_checkpoint(path):
    path = resolve_path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own errors for corrupt or truncated files
        raise CheckpointError(f"{path} is not a readable checkpoint: {e}") from None
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a mini-llm checkpoint (format {metadata.get('format')!r})")
    # Checkpoints written before the checksum have none: they load unchecked.
    if "sha256" in metadata and metadata["sha256"] != tensors_sha256(tensors):
        raise CheckpointError(f"{path} is damaged: its tensors do not match the checksum saved "
                              "with them")
    try:
        return _parse(metadata, tensors)
    except (KeyError, ValueError, TypeError) as e:  # a checkpoint with damaged metadata
        raise CheckpointError(f"{path} has incomplete or damaged metadata ({e!r})") from None


def tensors_sha256(tensors):
    """sha256 over the tensors' names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name} {t.dtype} {tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _parse(metadata, tensors):
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    optimizer_state = None
    if "optim_groups" in metadata:
        state = {int(i): dict(s) for i, s in json.loads(metadata["optim_scalars"]).items()}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, index, name = key.split(".", 2)
                state.setdefault(int(index), {})[name] = value
        groups = json.loads(metadata["optim_groups"], object_hook=_untag_tuple)
        optimizer_state = {"state": state, "param_groups": groups}
    meta = json.loads(metadata["meta"])
    missing = [k for k in ("iter", "model_config", "tokenizer", "train_config") if k not in meta]
    if missing:  # fail here, not deep inside a later step
        raise KeyError(f"meta lacks {missing}")
    return Checkpoint(model_state, optimizer_state, meta)


def _tag_tuples(value):
    """JSON has lists only: mark tuples (AdamW's betas) so that loading gives them back as
    tuples and param_groups round-trip exactly."""
    if isinstance(value, tuple):
        return {"__tuple__": [_tag_tuples(v) for v in value]}
    if isinstance(value, list):
        return [_tag_tuples(v) for v in value]
    if isinstance(value, dict):
        return {k: _tag_tuples(v) for k, v in value.items()}
    return value


def _untag_tuple(d):
    return tuple(d["__tuple__"]) if d.keys() == {"__tuple__"} else d


def load_model(path, device="cpu"):
    """Rebuild the model of a checkpoint; returns (model in eval mode, checkpoint)."""
    ckpt = load_checkpoint(path)
    try:
        model = GPT(ckpt.config)
        model.load_state_dict(ckpt.model_state)
    except (ConfigError, RuntimeError, KeyError) as e:
        raise CheckpointError(f"{resolve_path(path)} does not match its own model config: {e}") from None
    return model.to(device).eval(), ckpt
