"""The training run's arguments (`TrainConfig`) and result (`TrainResult`), the constants, the
argument checks, the device, the learning-rate schedule, the optimizer and the equivalent
command line. The package docstring (`deepcd.nn.train`) describes the run."""

from __future__ import annotations

import dataclasses
import json
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

OPTIMIZERS = ("adam", "lion", "diffgrad")
SCHEDULES = ("constant", "linear", "cosine")
SAFEGUARDS = ("none", "jacobi", "mic0")
DEVICES = ("auto", "cpu", "cuda")
# Lion wants a 3-10x smaller learning rate than Adam (DESIGN.md §6).
DEFAULT_LR = {"adam": 1e-4, "lion": 3e-5, "diffgrad": 1e-4}
DEFAULT_STEPS = 1000
VAL_RTOL = 1e-6
CHECKPOINT_FORMAT = "deepcd-train-checkpoint-v1"
LOG_FORMAT = "deepcd-train-log-v1"
CHECKPOINT = "checkpoint"
MODEL_FILE = "model.safetensors"
STATE_TENSORS = "optimizer.safetensors"
STATE_JSON = "state.json"
LOSS_WINDOW = 50  # the "final train loss" is the mean over this many last steps
# Arguments that may differ when resuming: they do not change what is computed.
_RESUME_FREE = frozenset(
    {"device", "threads", "progress", "checkpoint_every", "stop_at", "resume", "command", "out"}
)
# Default validation scenes (seeds far from the small ones recipes use); shapes per dimension.
_DEFAULT_VAL = (("bunny", 1001), ("smoke-obstacles", 1002))
_DEFAULT_VAL_SHAPE = {2: "64x64", 3: "32"}


@dataclass
class TrainConfig:
    """Everything a training run needs; `deepcd train` fills it from its arguments.

    dataset: a generated HDF5 dataset (`deepcd generate dataset`). arch/config: the network
    (`build_network(arch, dim, **config)`; dim comes from the dataset). use_flags: feed the
    FLUID/SOLID masks to the network. steps or epochs (epochs → ceil(epochs·train/batch) steps;
    neither: 1000 steps). lr None: the optimizer's default (`DEFAULT_LR`). warmup: linear ramp
    over that many steps before the schedule. val_scenes: "NAME:SHAPE:SEED" strings, None for
    the defaults, [] for none. eval_every/checkpoint_every 0: only at the start/end;
    checkpoint_every None: every `default_checkpoint_every(steps)` steps (a tenth of the run,
    at most 100). The last step is always checkpointed.
    stop_at: stop after this step as if killed (a checkpoint is written there); resume later.
    command: the command line as typed, for the model card.
    """

    dataset: str
    arch: str
    out: str
    config: dict[str, Any] = field(default_factory=dict)
    use_flags: bool = False
    device: str = "auto"
    batch_size: int = 4
    steps: int | None = None
    epochs: float | None = None
    lr: float | None = None
    optimizer: str = "adam"
    schedule: str = "constant"
    warmup: int = 0
    weight_decay: float = 0.0
    bf16: bool = False
    tf32: bool = False
    seed: int = 0
    threads: int | None = None
    eval_every: int = 500
    val_scenes: list[str] | None = None
    val_samples: int = 256
    val_maxiter: int = 2000
    safeguard: str = "none"
    loss: str = "dcdm"
    checkpoint_every: int | None = None
    resume: bool = False
    stop_at: int | None = None
    progress: bool = True
    command: str | None = None


@dataclass
class TrainResult:
    """What a run produced. `model` is the final network (rank 0; None on other ranks)."""

    out: Path
    steps: int
    total_steps: int
    finished: bool
    train_loss: float | None
    val_loss: float | None
    best: dict[str, Any] | None
    evaluations: list[dict[str, Any]]
    wall_s: float
    samples_per_s: float
    best_dir: Path | None = None
    last_dir: Path | None = None
    model: nn.Module | None = field(default=None, repr=False)


def default_checkpoint_every(total: int) -> int:
    """Checkpoint interval when none is given: a tenth of the run, between 1 and 100 steps."""
    return max(1, min(100, total // 10))


def _positive_int(value, what: str, zero_ok: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{what} must be an int, got {value!r}")
    if value < (0 if zero_ok else 1):
        raise ValueError(f"{what} must be {'>= 0' if zero_ok else '>= 1'}, got {value}")
    return int(value)


def _check_config(cfg: TrainConfig) -> None:
    """Argument errors that need no data: raised before anything is read or written."""
    from deepcd.nn.networks import ARCHITECTURES

    if cfg.arch not in ARCHITECTURES:
        raise ValueError(
            f"unknown architecture {cfg.arch!r}; choose from {', '.join(sorted(ARCHITECTURES))}"
        )
    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(
            f"unknown optimizer {cfg.optimizer!r}; choose from {', '.join(OPTIMIZERS)}"
        )
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {cfg.schedule!r}; choose from {', '.join(SCHEDULES)}")
    if cfg.safeguard not in SAFEGUARDS:
        raise ValueError(
            f"unknown safeguard {cfg.safeguard!r}; choose from {', '.join(SAFEGUARDS)}"
        )
    from deepcd.nn.loss import LOSSES

    if cfg.loss not in LOSSES:
        raise ValueError(f"unknown loss {cfg.loss!r}; choose from {', '.join(LOSSES)}")
    if cfg.device not in DEVICES and not str(cfg.device).startswith("cuda:"):
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {cfg.device!r}")
    if not isinstance(cfg.config, dict):
        raise ValueError(f"config must be a dict of network settings, got {cfg.config!r}")
    try:
        json.dumps(cfg.config)
    except TypeError as err:
        raise ValueError(f"config must be JSON-serializable: {err}") from None
    _positive_int(cfg.batch_size, "batch_size")
    if cfg.steps is not None and cfg.epochs is not None:
        raise ValueError("give steps or epochs, not both")
    if cfg.steps is not None:
        _positive_int(cfg.steps, "steps", zero_ok=True)  # 0: the initialization, evaluated
    if cfg.epochs is not None and not (math.isfinite(cfg.epochs) and cfg.epochs > 0):
        raise ValueError(f"epochs must be a positive number, got {cfg.epochs}")
    if cfg.lr is not None and not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise ValueError(f"lr must be a positive number, got {cfg.lr}")
    if not (math.isfinite(cfg.weight_decay) and cfg.weight_decay >= 0):
        raise ValueError(f"weight_decay must be >= 0, got {cfg.weight_decay}")
    _positive_int(cfg.warmup, "warmup", zero_ok=True)
    _positive_int(cfg.seed, "seed", zero_ok=True)
    _positive_int(cfg.eval_every, "eval_every", zero_ok=True)
    if cfg.checkpoint_every is not None:
        _positive_int(cfg.checkpoint_every, "checkpoint_every", zero_ok=True)
    _positive_int(cfg.val_samples, "val_samples", zero_ok=True)
    _positive_int(cfg.val_maxiter, "val_maxiter")
    if cfg.threads is not None:
        _positive_int(cfg.threads, "threads")
    if cfg.stop_at is not None:
        _positive_int(cfg.stop_at, "stop_at")


def _resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else "no visible GPU"
            raise ValueError(
                f"device {name!r} was requested but CUDA is not available (torch "
                f"{torch.__version__}, {build}); use --device cpu or auto"
            )
        if name == "cuda":
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device(name)
    return torch.device("cpu")


def lr_factor(step: int, schedule: str, warmup: int, total: int) -> float:
    """Multiplier of the base learning rate for optimizer step `step` (0-based) of `total`.

    A linear warmup (step+1)/warmup for the first `warmup` steps, then constant, linear
    (1 − t) or cosine (½(1 + cos πt)) in t = (step − warmup)/(total − warmup): the linear and
    cosine schedules reach 0 when the run ends (the value after its last step).
    """
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    t = min(max(step - warmup, 0) / max(total - warmup, 1), 1.0)
    if schedule == "linear":
        return 1.0 - t
    return 0.5 * (1.0 + math.cos(math.pi * t))


def _set_tf32(enabled: bool) -> None:
    """TF32 for CUDA matmuls and convolutions on or off (the new precision API where torch
    has it: mixing it with the legacy allow_tf32 flags makes torch raise)."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    if hasattr(torch.backends.cuda.matmul, "fp32_precision") and conv is not None:
        torch.backends.cuda.matmul.fp32_precision = "tf32" if enabled else "ieee"
        conv.fp32_precision = "tf32" if enabled else "ieee"
    else:  # pragma: no cover - torch < 2.9
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


def make_optimizer(name: str, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """adam (torch.optim.Adam), lion or diffgrad (pytorch_optimizer)."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "lion":
        from pytorch_optimizer import Lion

        return Lion(params, lr=lr, weight_decay=weight_decay)
    if name == "diffgrad":
        from pytorch_optimizer import DiffGrad

        return DiffGrad(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")


def command_line(cfg: TrainConfig) -> str:
    """A `deepcd train` command equivalent to `cfg` (used when none was typed)."""
    defaults = TrainConfig(dataset="", arch="", out="")
    parts = ["deepcd", "train", "--dataset", cfg.dataset, "--arch", cfg.arch, "--out", cfg.out]
    for key, value in sorted(cfg.config.items()):
        parts += ["--config", f"{key}={json.dumps(value, separators=(',', ':'))}"]
    for f in dataclasses.fields(cfg):
        name = f.name
        value = getattr(cfg, name)
        if name in ("dataset", "arch", "out", "config", "command") or value == getattr(
            defaults, name
        ):
            continue
        flag = "--" + name.replace("_", "-")
        if name == "val_scenes":
            parts += [x for s in (value or ["none"]) for x in ("--val-scene", s)]
        elif name == "progress":
            parts.append("--no-progress")
        elif isinstance(value, bool):
            parts.append(flag)
        else:
            parts += [flag, str(value)]
    return shlex.join(parts)
