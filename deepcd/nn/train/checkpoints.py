"""Pickle-free training state: tensors to safetensors, the rest to JSON (`_encode`/`_decode`),
atomic JSON files, the checkpoint folder written by a directory swap and read back with its
hashes checked, and the resume arguments' comparison. The checkpoint format is described in
the package docstring (`deepcd.nn.train`)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepcd._version import __version__
from deepcd.nn.train.config import (
    _RESUME_FREE,
    CHECKPOINT,
    CHECKPOINT_FORMAT,
    MODEL_FILE,
    STATE_JSON,
    STATE_TENSORS,
)
from deepcd.nn.weights import sha256


def _encode(obj, path: str, tensors: dict[str, torch.Tensor]):
    """A JSON-able tree for `obj`; tensors go to `tensors` under their path."""
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().to("cpu").contiguous().clone()
        return {"__tensor__": path}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, f"{path}/{k}", tensors) for k, v in obj.items()}
        return {
            "__dict__": [
                [_encode(k, f"{path}/key{i}", tensors), _encode(v, f"{path}/{k}", tensors)]
                for i, (k, v) in enumerate(obj.items())
            ]
        }
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    raise TypeError(f"cannot store a {type(obj).__name__} at {path} in a checkpoint")


def _decode(obj, tensors: dict[str, torch.Tensor]):
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            key = obj["__tensor__"]
            if key not in tensors:
                raise ValueError(f"the checkpoint's tensor file lacks {key!r}")
            return tensors[key]
        if set(obj) == {"__tuple__"}:
            return tuple(_decode(v, tensors) for v in obj["__tuple__"])
        if set(obj) == {"__dict__"}:
            return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__dict__"]}
        return {k: _decode(v, tensors) for k, v in obj.items()}
    return obj


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_json(path: Path, data) -> None:
    """JSON written under a temporary name, flushed, then renamed over `path`."""
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(
    out: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    record: dict[str, Any],
) -> Path:
    """Write OUT/checkpoint atomically (see the module docstring); `record` is the JSON part."""
    from safetensors.torch import save_file

    final = out / CHECKPOINT
    tmp = out / f".{CHECKPOINT}.partial-{os.getpid()}"
    old = out / f".{CHECKPOINT}.old"
    for stale in out.glob(f".{CHECKPOINT}.partial-*"):  # left by killed runs
        shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir(parents=True)
    model_tensors = {
        k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()
    }
    save_file(model_tensors, str(tmp / MODEL_FILE), metadata={"format": CHECKPOINT_FORMAT})
    tensors: dict[str, torch.Tensor] = {}
    opt_tree = _encode(optimizer.state_dict(), "optimizer", tensors)
    sched_tree = _encode(scheduler.state_dict(), "scheduler", tensors)
    tensors["rng/torch_cpu"] = torch.get_rng_state()
    save_file(tensors, str(tmp / STATE_TENSORS), metadata={"format": CHECKPOINT_FORMAT})
    for name in (MODEL_FILE, STATE_TENSORS):
        with open(tmp / name, "rb") as f:
            os.fsync(f.fileno())
    state = {
        "format": CHECKPOINT_FORMAT,
        "deepcd_version": __version__,
        **record,
        "optimizer": opt_tree,
        "scheduler": sched_tree,
        "files": {name: sha256(tmp / name) for name in (MODEL_FILE, STATE_TENSORS)},
    }
    _write_json(tmp / STATE_JSON, state)  # the commit marker of this folder
    _fsync_dir(tmp)
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(out)
    if old.exists():
        shutil.rmtree(old)
    return final


def checkpoint_dir(out: Path) -> Path | None:
    """The checkpoint to resume from: OUT/checkpoint, else a complete OUT/.checkpoint.old."""
    final = out / CHECKPOINT
    if final.exists():
        return final
    old = out / f".{CHECKPOINT}.old"
    if (old / STATE_JSON).exists():
        return old
    return None


def load_checkpoint(path: Path) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(state.json content, model tensors, optimizer/scheduler tensors) of a checkpoint folder.

    Refuses a folder that is incomplete, from another format, or whose files do not match the
    hashes recorded when it was written, with a ValueError naming the problem.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    where = f"checkpoint {path}"
    state_path = path / STATE_JSON
    if not state_path.exists():
        raise ValueError(f"{where} is incomplete (no {STATE_JSON}): it was never fully written")
    try:
        state = json.loads(state_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{where} is corrupt: {STATE_JSON} is not valid JSON ({err})") from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        got = state.get("format") if isinstance(state, dict) else None
        raise ValueError(f"{where} is not a deepcd training checkpoint (format {got!r})")
    files = state.get("files", {})
    loaded = []
    for name in (MODEL_FILE, STATE_TENSORS):
        f = path / name
        if not f.exists():
            raise ValueError(f"{where} is incomplete: {name} is missing")
        if files.get(name) != sha256(f):
            raise ValueError(
                f"{where} is corrupt: {name} does not match the hash recorded in {STATE_JSON} "
                "(truncated or modified)"
            )
        try:
            loaded.append(load_file(str(f), device="cpu"))
        except (SafetensorError, OSError, ValueError) as err:
            raise ValueError(f"{where} is corrupt: {name} is not a valid safetensors file") from err
    for key in ("step", "args"):
        if key not in state:
            raise ValueError(f"{where} is corrupt: {STATE_JSON} lacks {key!r}")
    return state, loaded[0], loaded[1]


def _compare_args(saved: dict, current: dict, schedule: str, where: Path) -> None:
    """Refuse to resume with arguments that change what the run computes."""
    free = set(_RESUME_FREE)
    if schedule == "constant" and saved.get("schedule") == "constant":
        free |= {"steps", "epochs", "total_steps"}  # the learning rate does not depend on them
    diffs = [
        f"{key}: checkpoint {saved.get(key)!r}, now {current.get(key)!r}"
        for key in sorted((set(saved) | set(current)) - free)
        if saved.get(key) != current.get(key)
    ]
    if diffs:
        raise ValueError(
            f"--resume: the arguments differ from those of checkpoint {where}; resume with the "
            "same arguments (or start a new run in another --out). Differences: " + "; ".join(diffs)
        )
