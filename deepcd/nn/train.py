"""The DCDM training loop: batches of right-hand sides, the DCDM loss, model selection by the
number of DCDM iterations on held-out scenes, pickle-free checkpoints, data-parallel runs.

    from deepcd.nn.train import TrainConfig, train
    result = train(TrainConfig(dataset="datasets/generated/tiny-16.h5", arch="multilevel",
                               out="runs/tiny", steps=200, lr=1e-3))

Each step draws a global batch of right-hand sides b from the dataset's TRAIN split (samples
of several matrices mixed; samples of different grid shapes are run as separate sub-batches of
the same step), computes q = net(b, flags) and the DCDM loss ‖b − αAq‖² with the batch's own
per-sample Laplacians (`GridLaplacian` over the stacked flags and boundaries), and takes an
optimizer step and a learning-rate scheduler step.

Determinism. The network is initialized after `torch.manual_seed(seed)`. The samples of step s
are a pure function of (seed, s): the global sample positions s·B … s·B + B − 1 walk through one
permutation of the training split per epoch, `np.random.default_rng([seed, epoch])`. So a run
resumed from a checkpoint sees exactly the batches the uninterrupted run saw, and on the same
CPU (same thread count) it ends with bit-identical weights.

Evaluation every `eval_every` steps (also before the first step and after the last): the mean
DCDM loss on the VAL split (matrices held out whole; at most `val_samples` samples, a fixed
evenly spaced subset), and the number of DCDM iterations to rtol 1e-6 on validation *scenes*
generated on the fly (`NAME:SHAPE:SEED`) — with the safeguard preconditioner `safeguard` — next
to CG's count on the same problems (measured once). The best model is the one with the fewest
mean DCDM iterations, ties broken by the validation loss; it is written with `save_solver` to
OUT/best at once, the final model to OUT/last.

Outputs under OUT: log.csv (one row per step: step, loss, lr, samples_per_s, time_s, and the
validation columns on evaluation steps), log.json (the run summary, rewritten at every
evaluation and at the end), best/ and last/ (solver folders: weights.safetensors + card.json),
checkpoint/.

Checkpoint format (OUT/checkpoint/, format "deepcd-train-checkpoint-v1"), no pickle anywhere:
  model.safetensors      the network's state_dict
  optimizer.safetensors  every tensor of the optimizer and scheduler state, keyed by its path
                         ("optimizer/state/3/exp_avg", ...), plus torch's CPU RNG state
  state.json             written last: step, the full training arguments, the optimizer's
                         param_groups and non-tensor state and the scheduler state (with each
                         tensor replaced by a reference into optimizer.safetensors, tuples and
                         non-string dict keys encoded so that they round-trip exactly), the
                         best-so-far record, the evaluation history, the SHA-256 of both
                         safetensors files.
A checkpoint is written into a fresh folder OUT/.checkpoint.partial-PID which then replaces
OUT/checkpoint by a directory swap (checkpoint → .checkpoint.old, partial → checkpoint, old
removed): at any instant one complete checkpoint exists, and loading falls back to
.checkpoint.old when a kill landed between the two renames. Loading checks the hashes, the
format and the arguments, and refuses anything else with a ValueError that says why.

Resuming (`resume=True`, `--resume`) continues from OUT/checkpoint at the step it records,
with the optimizer, scheduler, best-so-far and log restored (log.csv rows a killed run wrote
after its last checkpoint are dropped and redone). Every argument must equal the
checkpoint's except the operational ones (device, threads, progress, checkpoint_every,
stop_at) — and steps/epochs under the constant schedule, whose learning rate does not depend
on the run length, so such a run can be extended. `stop_at` stops after a step as if killed.

Threads: validation runs numba's parallel kernels, whose OpenMP layer resets the process's
OpenMP thread count — torch's too; the loop restores torch's count after each evaluation so
that the training numerics (and `--threads`) stay what they were.

Distributed: launched by torchrun with WORLD_SIZE > 1, every rank joins a process group (nccl
on CUDA, gloo on CPU), wraps the loss in DistributedDataParallel and takes the samples
rank, rank + W, rank + 2W, … of each global batch (so the global batch, the gradient and the
schedule do not depend on W); rank 0 alone logs, evaluates and writes files, with barriers
around checkpoints.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import math
import os
import platform
import shlex
import shutil
import sys
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepcd._version import __version__
from deepcd.hardware import cpu_name
from deepcd.nn.direction import apply_network
from deepcd.nn.weights import sha256

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


# ---------------------------------------------------------------------------------------------
# configuration


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


@dataclass(frozen=True)
class ValScene:
    """A validation scene: scene name, grid shape, seed."""

    name: str
    shape: tuple[int, ...]
    seed: int

    @property
    def spec(self) -> str:
        return f"{self.name}:{'x'.join(map(str, self.shape))}:{self.seed}"

    @classmethod
    def parse(cls, spec: str, ndim: int) -> ValScene:
        from deepcd.problems import parse_shape, scenes

        parts = str(spec).split(":")
        if len(parts) != 3:
            raise ValueError(f"--val-scene takes NAME:SHAPE:SEED (e.g. bunny:32:7), got {spec!r}")
        name, shape, seed = parts
        if name not in scenes():
            raise ValueError(
                f"--val-scene {spec!r}: unknown scene {name!r}; choose from {', '.join(scenes())}"
            )
        try:
            seed_value = int(seed)
        except ValueError:
            raise ValueError(f"--val-scene {spec!r}: the seed must be an int") from None
        grid = parse_shape(shape, ndim)
        if len(grid) != ndim:
            raise ValueError(
                f"--val-scene {spec!r} is {len(grid)}D but the dataset (and network) is {ndim}D"
            )
        return cls(name, grid, seed_value)


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


# ---------------------------------------------------------------------------------------------
# pickle-free state: tensors to safetensors, the rest to JSON


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


# ---------------------------------------------------------------------------------------------
# data


class _Batches:
    """The deterministic batch order: global positions step·B + j walk one permutation of the
    training split per epoch, `default_rng([seed, epoch])`."""

    def __init__(self, n: int, batch: int, seed: int):
        self.n, self.batch, self.seed = n, batch, seed
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.clear()
            self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._perms[epoch]

    def indices(self, step: int) -> list[int]:
        pos = step * self.batch + np.arange(self.batch, dtype=np.int64)
        return [int(self._perm(int(p // self.n))[p % self.n]) for p in pos]


class _Matrices:
    """Per-matrix flags on the device and boundaries, for building batched Laplacians."""

    def __init__(self, infos, device: torch.device):
        self.device = device
        self.flags = {
            m: torch.as_tensor(np.ascontiguousarray(i.flags, np.int8), device=device)
            for m, i in infos.items()
        }
        self.boundary = {m: tuple(i.boundary) for m, i in infos.items()}
        # variable-coefficient matrices: their grid stencils, for the batched operator
        self.stencil = {}
        for m, i in infos.items():
            if getattr(i, "coefficients", None) is not None:
                from deepcd.problems.coefficients import weighted_stencil

                d, links = weighted_stencil(i.flags, i.boundary, i.coefficients)
                self.stencil[m] = (
                    torch.as_tensor(d, dtype=torch.float32, device=device),
                    [torch.as_tensor(w, dtype=torch.float32, device=device) for w in links],
                )

    def groups(self, samples: Sequence[tuple[np.ndarray, int]]):
        """[(b (n,1,*grid) float32, flags (n,*grid) int8, GridLaplacian)] per grid shape."""
        from deepcd.nn.stencil import GridLaplacian

        by_shape: dict[tuple[int, ...], list] = {}
        for rhs, m in samples:
            by_shape.setdefault(tuple(rhs.shape), []).append((rhs, m))
        out = []
        for shape in sorted(by_shape):
            items = by_shape[shape]
            b = torch.from_numpy(np.stack([np.asarray(r, np.float32) for r, _ in items]))
            b = b[:, None].to(self.device)
            flags = torch.stack([self.flags[m] for _, m in items])
            bcs = [self.boundary[m] for _, m in items]
            stencil = None
            if any(m in self.stencil for _, m in items):
                plain = GridLaplacian(flags, bcs, dim=len(shape), device=self.device)
                diags, links = [], [[] for _ in shape]
                for k, (_, m) in enumerate(items):
                    d, ws = self.stencil.get(
                        m, (plain.diag[k, 0], [w[k, 0] for w in plain.links()])
                    )
                    diags.append(d)
                    for a, w in enumerate(ws):
                        links[a].append(w)
                stencil = (torch.stack(diags), [torch.stack(w) for w in links])
            lap = GridLaplacian(flags, bcs, dim=len(shape), device=self.device, stencil=stencil)
            out.append((b, flags, lap))
        return out


class _BatchLoss(nn.Module):
    """Sum over a batch (possibly several shape groups) of the per-sample DCDM loss; the
    network runs under bf16 autocast when asked, the loss always in float32. One module call
    per step so that DistributedDataParallel sees one forward per backward."""

    def __init__(self, net: nn.Module, device_type: str, bf16: bool, loss: str = "dcdm"):
        super().__init__()
        self.net = net
        self.device_type = device_type
        self.bf16 = bf16
        self.loss = loss

    def forward(self, groups) -> torch.Tensor:
        total = None
        for b, flags, lap in groups:
            part = batch_loss(self.net, self.loss, b, flags, lap, self.device_type, self.bf16)
            total = part if total is None else total + part
        return total


def batch_loss(net, loss: str, b, flags, lap, device_type: str, bf16: bool) -> torch.Tensor:
    """The summed per-sample training loss `loss` of one shape group."""
    from deepcd.nn.loss import dcdm_loss, pcg_loss

    def apply(r: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            return apply_network(net, r, flags, lap.boundary, lap if lap.weighted else None).float()

    if loss == "pcg":
        return pcg_loss(apply, b, lap, reduction="sum")
    return dcdm_loss(apply(b), b, lap, reduction="sum", step=loss)


class _InferenceNet(nn.Module):
    """The network as DCDM's direction source during validation (autocast like training)."""

    def __init__(self, net: nn.Module, device_type: str, bf16: bool):
        super().__init__()
        self.net = net
        self.dim = net.dim
        self.device_type = device_type
        self.bf16 = bf16

    def forward(
        self, r: torch.Tensor, flags: torch.Tensor | None = None, boundary=None, *, operator=None
    ) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.bf16):
            q = apply_network(self.net, r, flags, boundary, operator)
        return q.float()


# ---------------------------------------------------------------------------------------------
# evaluation


class _Validator:
    """Validation loss on the VAL split and DCDM/CG iterations on validation scenes."""

    def __init__(self, cfg: TrainConfig, val_ds, device: torch.device, scenes: list[ValScene]):
        from deepcd.iterative.krylov import cg
        from deepcd.problems import scene

        self.cfg, self.ds, self.device = cfg, val_ds, device
        self.matrices = _Matrices(val_ds.matrices, device) if val_ds is not None else None
        n = len(val_ds) if val_ds is not None else 0
        k = min(cfg.val_samples, n)
        self.indices = sorted({int(i) for i in np.linspace(0, n - 1, k).round()}) if k else []
        self.scenes = scenes
        self.problems = []
        self.cg_iterations = []
        for s in scenes:
            problem = scene(s.name, s.shape, seed=s.seed)
            res = cg(problem.stencil, problem.b, rtol=VAL_RTOL)
            self.problems.append(problem)
            self.cg_iterations.append(int(res.iterations) if res.converged else None)
        self.M = [self._preconditioner(p) for p in self.problems]

    def _preconditioner(self, problem):
        from deepcd.iterative.preconditioners import make_preconditioner

        if self.cfg.safeguard == "none":
            return None
        return make_preconditioner(self.cfg.safeguard, problem.stencil)

    def loss(self, net: nn.Module) -> float | None:
        if not self.indices:
            return None

        bs = self.cfg.batch_size
        total, count = 0.0, 0
        was_training = net.training
        net.eval()
        try:
            with torch.no_grad():
                for i0 in range(0, len(self.indices), bs):
                    samples = [self.ds[i] for i in self.indices[i0 : i0 + bs]]
                    for b, flags, lap in self.matrices.groups(samples):
                        total += float(
                            batch_loss(
                                net, self.cfg.loss, b, flags, lap, self.device.type, self.cfg.bf16
                            )
                        )
                        count += b.shape[0]
        finally:
            net.train(was_training)
        return total / count

    def iterations(self, net: nn.Module) -> list[dict[str, Any]]:
        from deepcd.iterative.dcdm import dcdm
        from deepcd.nn.direction import NetworkDirection

        rows = []
        was_training = net.training
        wrapped = _InferenceNet(net, self.device.type, self.cfg.bf16)
        try:
            for s, problem, M, cg_its in zip(
                self.scenes, self.problems, self.M, self.cg_iterations, strict=True
            ):
                direction = NetworkDirection(wrapped, problem, device=self.device)
                t = time.perf_counter()
                res = dcdm(
                    problem.stencil,
                    problem.b,
                    direction=direction,
                    M=M,
                    rtol=VAL_RTOL,
                    maxiter=self.cfg.val_maxiter,
                )
                rows.append(
                    {
                        "scene": s.name,
                        "shape": list(s.shape),
                        "seed": s.seed,
                        "dcdm_iterations": int(res.iterations),
                        "dcdm_converged": bool(res.converged),
                        "cg_iterations": cg_its,
                        "safeguard_steps": int(res.settings.get("safeguard_steps", 0)),
                        "dcdm_s": round(time.perf_counter() - t, 4),
                    }
                )
        finally:
            net.train(was_training)
        return rows


@contextlib.contextmanager
def _torch_threads_kept():
    """Restore torch's intra-op thread count after validation: numba's OpenMP threading layer
    (the parallel CG/DCDM kernels) resets the shared OpenMP thread count, which would silently
    change torch's threads — and with them the training's reduction order — from then on."""
    n = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)


def _selection_key(record: dict[str, Any], first: dict[str, Any] | None = None):
    """Fewest mean validation iterations, ties by loss — and never a model that needs more
    iterations than the first evaluated one (the initialization) on any validation scene."""
    if first is not None and first is not record:
        base = {r["scene"]: r["dcdm_iterations"] for r in first.get("scenes", [])}
        for row in record.get("scenes", []):
            if row["dcdm_iterations"] > base.get(row["scene"], math.inf):
                return (math.inf, math.inf)
    iters = record.get("val_dcdm_mean")
    loss = record.get("val_loss")
    if loss is None:
        loss = record.get("train_loss")
    return (
        math.inf if iters is None and record.get("scenes") else (iters or 0.0),
        math.inf if loss is None else loss,
    )


# ---------------------------------------------------------------------------------------------
# environment


def _hardware(device: torch.device, world: int) -> dict[str, Any]:
    hw = {
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "threads": torch.get_num_threads(),
        "world_size": world,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "deepcd": __version__,
    }
    if device.type == "cpu":
        hw["cpu_count"] = os.cpu_count()
    return hw


def _distributed(cfg: TrainConfig) -> tuple[int, int, torch.device, bool]:
    """(rank, world size, device, whether this call initialized the process group)."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _resolve_device(cfg.device, local_rank)
    if world <= 1:
        return 0, 1, device, False
    if not dist.is_available():
        raise ValueError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    created = False
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        created = True
    return dist.get_rank(), dist.get_world_size(), device, created


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


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


# ---------------------------------------------------------------------------------------------
# the loop


class _Log:
    """log.csv: one row per step, validation columns on evaluation steps."""

    def __init__(self, path: Path, scenes: list[ValScene], resume_step: int | None):
        self.path = path
        self.columns = ["step", "loss", "lr", "samples_per_s", "time_s", "val_loss", "val_dcdm"]
        self.columns += [f"dcdm:{s.spec}" for s in scenes]
        rows = []
        if resume_step is not None and path.exists():
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                if reader.fieldnames == self.columns:
                    rows = [r for r in reader if r["step"] and int(r["step"]) <= resume_step]
        tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, self.columns)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)
        self.file = open(path, "a", newline="")
        self.writer = csv.DictWriter(self.file, self.columns)

    def row(self, values: dict[str, Any]) -> None:
        self.writer.writerow({k: values.get(k, "") for k in self.columns})
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def _fmt(x: float) -> str:
    return repr(float(x))


def _val_columns(record: dict[str, Any], scenes: list[ValScene]) -> dict[str, Any]:
    cols = {
        "val_loss": "" if record["val_loss"] is None else _fmt(record["val_loss"]),
        "val_dcdm": "" if record["val_dcdm_mean"] is None else f"{record['val_dcdm_mean']:g}",
    }
    for s, row in zip(scenes, record["scenes"], strict=True):
        cols[f"dcdm:{s.spec}"] = row["dcdm_iterations"]
    return cols


def _eval_line(record: dict[str, Any]) -> str:
    parts = [f"step {record['step']}:"]
    if record["val_loss"] is not None:
        parts.append(f"val loss {record['val_loss']:.4g}")
    for row in record["scenes"]:
        shape = "x".join(map(str, row["shape"]))
        its = row["dcdm_iterations"]
        mark = "" if row["dcdm_converged"] else " (not converged)"
        parts.append(f"{row['scene']}:{shape} DCDM {its}{mark} / CG {row['cg_iterations']}")
    return "  ".join(parts)


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


def train(config: TrainConfig) -> TrainResult:
    """Train a direction network on a dataset; see the module docstring."""
    cfg = dataclasses.replace(config, config=dict(config.config))
    _check_config(cfg)
    if not Path(cfg.dataset).exists():
        raise FileNotFoundError(f"no dataset file {cfg.dataset!r}")
    out = Path(cfg.out)
    rank, world, device, created_group = _distributed(cfg)
    threads_before = torch.get_num_threads()
    try:
        if cfg.bf16 and device.type != "cuda":
            raise ValueError("--bf16 is for GPUs: it needs a CUDA device (got device cpu)")
        if cfg.tf32 and device.type != "cuda":
            raise ValueError("--tf32 is for GPUs: it needs a CUDA device (got device cpu)")
        if device.type == "cuda":
            _set_tf32(cfg.tf32)
        elif cfg.threads:
            torch.set_num_threads(cfg.threads)
        if cfg.batch_size < world:
            raise ValueError(
                f"batch_size {cfg.batch_size} is smaller than the {world} processes: each "
                "rank needs at least one sample per step"
            )
        return _train(cfg, config, out, rank, world, device)
    finally:
        if torch.get_num_threads() != threads_before:
            torch.set_num_threads(threads_before)
        if created_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def _train(
    cfg: TrainConfig,
    given: TrainConfig,
    out: Path,
    rank: int,
    world: int,
    device: torch.device,
) -> TrainResult:
    from tqdm.auto import tqdm

    from deepcd.nn.dataset import PoissonDataset
    from deepcd.nn.networks import build_network, count_parameters, flops_per_unknown
    from deepcd.nn.weights import load_solver, save_solver
    from deepcd.progress import bars_enabled

    t_start = time.perf_counter()
    train_ds = PoissonDataset(cfg.dataset, "train")
    val_ds = PoissonDataset(cfg.dataset, "val")
    if len(train_ds) == 0:
        raise ValueError(f"{cfg.dataset} has no training samples (its train split is empty)")
    shapes = sorted({m.shape for m in train_ds.matrices.values()})
    dims = {len(s) for s in shapes}
    if len(dims) != 1:
        raise ValueError(f"{cfg.dataset} mixes 2D and 3D matrices: {shapes}")
    dim = dims.pop()
    if "dim" in cfg.config and cfg.config["dim"] != dim:
        raise ValueError(f"config dim={cfg.config['dim']} but the dataset is {dim}D")
    if cfg.use_flags:
        cfg.config["use_flags"] = True
    net_config = {k: v for k, v in cfg.config.items() if k != "dim"}

    # validation scenes (resolved, so a resume compares the same list)
    if cfg.val_scenes is None:
        taken = {(m.scene, m.shape, m.seed) for m in train_ds.matrices.values()}
        taken |= {(m.scene, m.shape, m.seed) for m in val_ds.matrices.values()}
        specs = []
        for name, seed in _DEFAULT_VAL:
            s = ValScene.parse(f"{name}:{_DEFAULT_VAL_SHAPE[dim]}:{seed}", dim)
            while (s.name, s.shape, s.seed) in taken:
                s = ValScene(s.name, s.shape, s.seed + 1)
            specs.append(s.spec)
        cfg.val_scenes = specs
    scenes = [ValScene.parse(s, dim) for s in cfg.val_scenes]
    n_train = len(train_ds)
    total = cfg.steps
    if total is None:
        total = (
            math.ceil(cfg.epochs * n_train / cfg.batch_size)
            if cfg.epochs is not None
            else DEFAULT_STEPS
        )
    if cfg.lr is None:
        cfg.lr = DEFAULT_LR[cfg.optimizer]
    if cfg.stop_at is not None and cfg.stop_at > total:
        raise ValueError(f"stop_at {cfg.stop_at} is beyond the run's {total} steps")
    args = {**dataclasses.asdict(cfg), "dataset": str(Path(cfg.dataset).resolve())}
    args["total_steps"] = total
    args = json.loads(json.dumps(args))  # as a checkpoint stores them (tuples become lists)
    dataset_info = {
        "file": Path(cfg.dataset).name,
        "path": str(Path(cfg.dataset).resolve()),
        "name": train_ds.name,
        "recipe": train_ds.recipe,
        "recipe_sha256": hashlib.sha256(train_ds.recipe.encode()).hexdigest(),
        "deepcd_version": train_ds.deepcd_version,
        "train_matrices": [m.name for m in train_ds.matrices.values()],
        "val_matrices": [m.name for m in val_ds.matrices.values()],
        "train_samples": n_train,
        "val_samples": len(val_ds),
    }

    # the run folder: a new run never overwrites an old one, but a run that was interrupted
    # before its first checkpoint saved nothing to continue from: it starts again at step 0
    ckpt_path = checkpoint_dir(out)
    state = None
    unsaved = ckpt_path is None and (out / "log.csv").exists()
    if unsaved and rank == 0:
        print(
            f"deepcd train: {out} holds a run interrupted before its first checkpoint; "
            "starting it again from step 0",
            file=sys.stderr,
        )
    if cfg.resume and not unsaved:
        if ckpt_path is None:
            raise ValueError(f"--resume: {out} holds no checkpoint to resume from")
        state, model_tensors, state_tensors = load_checkpoint(ckpt_path)
        _compare_args(state["args"], args, cfg.schedule, ckpt_path)
        if state.get("dataset_recipe_sha256") != dataset_info["recipe_sha256"] or state.get(
            "dataset_samples"
        ) != [n_train, len(val_ds)]:
            raise ValueError(
                f"--resume: {cfg.dataset} is not the dataset the checkpoint was trained on "
                "(its recipe or sample counts differ)"
            )
        if state["step"] > total:
            raise ValueError(
                f"--resume: the checkpoint is at step {state['step']}, beyond --steps {total}"
            )
    elif ckpt_path is not None:
        raise ValueError(
            f"{out} already holds a training run; pass --resume to continue it, or choose "
            "another --out (or delete the folder) to start over"
        )

    # the network, optimizer, schedule
    torch.manual_seed(cfg.seed)
    try:
        net = build_network(cfg.arch, dim, **net_config)
    except TypeError as err:
        raise ValueError(f"--config does not fit architecture {cfg.arch!r}: {err}") from None
    net = net.to(device)
    loss_module: nn.Module = _BatchLoss(net, device.type, cfg.bf16, cfg.loss)
    optimizer = make_optimizer(cfg.optimizer, net.parameters(), cfg.lr, cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, cfg.schedule, cfg.warmup, total)
    )
    start = 0
    best: dict[str, Any] | None = None
    evaluations: list[dict[str, Any]] = []
    recent: deque[float] = deque(maxlen=LOSS_WINDOW)
    wall_before = 0.0
    samples_seen_time = [0.0, 0]  # seconds in training steps, samples
    if state is not None:
        try:
            net.load_state_dict(model_tensors)
            optimizer.load_state_dict(_decode(state["optimizer"], state_tensors))
            scheduler.load_state_dict(_decode(state["scheduler"], state_tensors))
        except (RuntimeError, KeyError, ValueError, TypeError) as err:
            raise ValueError(f"checkpoint {ckpt_path} does not fit this run: {err}") from err
        if "rng/torch_cpu" in state_tensors:
            torch.set_rng_state(state_tensors["rng/torch_cpu"])
        start = int(state["step"])
        best = state.get("best")
        evaluations = list(state.get("evaluations", []))
        recent.extend(state.get("recent_losses", []))
        wall_before = float(state.get("wall_s", 0.0))
        samples_seen_time = list(state.get("throughput", samples_seen_time))
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        loss_module = DistributedDataParallel(
            loss_module,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True,  # the shared coarse levels idle on small grids
        )

    is_main = rank == 0
    hardware = _hardware(device, world)
    params = count_parameters(net)
    flops = {
        "x".join(map(str, s)): flops_per_unknown(net, s)
        for s in sorted(set(shapes) | {sc.shape for sc in scenes})
    }
    command = cfg.command or command_line(given)
    validator = None
    log = None
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        with _torch_threads_kept():
            validator = _Validator(cfg, val_ds if len(val_ds) else None, device, scenes)
        log = _Log(out / "log.csv", scenes, start if state is not None else None)
    batches = _Batches(n_train, cfg.batch_size, cfg.seed)
    train_matrices = _Matrices(train_ds.matrices, device)

    def load(step: int):
        return [train_ds[i] for i in batches.indices(step)[rank::world]]

    def card(step: int, record: dict[str, Any], wall: float, final=None) -> dict[str, Any]:
        """The solver card of the model of `step` (`record`: its evaluation); `final`: the
        run's final losses, once it has ended."""
        rec = record
        return {
            "name": out.name,
            "step": step,
            "total_steps": total,
            "parameters": params,
            "flops_per_unknown": flops,
            "dataset": dataset_info,
            "command": command,
            "wall_time_s": round(wall, 3),
            "hardware": hardware,
            "training": {
                "optimizer": cfg.optimizer,
                "lr": cfg.lr,
                "schedule": cfg.schedule,
                "warmup": cfg.warmup,
                "weight_decay": cfg.weight_decay,
                "batch_size": cfg.batch_size,
                "seed": cfg.seed,
                "bf16": cfg.bf16,
                "tf32": cfg.tf32,
                "loss": cfg.loss,
                "inference": "bf16-autocast" if cfg.bf16 else "float32",
            },
            "train_loss": rec.get("train_loss"),
            "val_loss": rec.get("val_loss"),
            "val_dcdm_mean": rec.get("val_dcdm_mean"),
            "validation": {
                "rtol": VAL_RTOL,
                "safeguard": cfg.safeguard,
                "maxiter": cfg.val_maxiter,
                "table": rec.get("scenes", []),
            },
            "selection": "fewest mean DCDM iterations on the validation scenes, ties broken "
            "by the validation loss, among models no worse than the first evaluated one "
            "(the initialization) on every validation scene",
            **({"final": final} if final else {}),
        }

    def evaluate(step: int, wall: float) -> dict[str, Any]:
        nonlocal best
        t = time.perf_counter()
        with _torch_threads_kept():
            val_loss = validator.loss(net)
            rows = validator.iterations(net)
        mean = float(np.mean([r["dcdm_iterations"] for r in rows])) if rows else None
        record = {
            "step": step,
            "train_loss": float(np.mean(recent)) if recent else None,
            "val_loss": val_loss,
            "val_dcdm_mean": mean,
            "scenes": rows,
            "eval_s": round(time.perf_counter() - t, 3),
        }
        evaluations.append(record)
        first = evaluations[0]
        if best is None or _selection_key(record, first) < _selection_key(best, first):
            best = record
            save_solver(out / "best", net, card(step, record, wall))
        return record

    def summary(status: str, step: int, wall: float) -> dict[str, Any]:
        last = evaluations[-1] if evaluations else {}
        return {
            "format": LOG_FORMAT,
            "status": status,
            "step": step,
            "total_steps": total,
            "command": command,
            "args": args,
            "dataset": {k: v for k, v in dataset_info.items() if k != "recipe"},
            "hardware": hardware,
            "parameters": params,
            "flops_per_unknown": flops,
            "wall_s": round(wall, 3),
            "samples_per_s": samples_seen_time[1] / samples_seen_time[0]
            if samples_seen_time[0]
            else None,
            "final_train_loss": float(np.mean(recent)) if recent else None,
            "final_val_loss": last.get("val_loss"),
            "cg_iterations": {
                s.spec: c for s, c in zip(scenes, validator.cg_iterations, strict=True)
            },
            "best": best,
            "evaluations": evaluations,
        }

    def checkpoint(step: int, wall: float) -> None:
        _barrier(world)
        if is_main:
            record = {
                "step": step,
                "args": args,
                "command": command,
                "dataset_recipe_sha256": dataset_info["recipe_sha256"],
                "dataset_samples": [n_train, len(val_ds)],
                "best": best,
                "evaluations": evaluations,
                "recent_losses": list(recent),
                "wall_s": wall,
                "throughput": samples_seen_time,
                "world_size": world,
            }
            save_checkpoint(out, net, optimizer, scheduler, record)
        _barrier(world)

    def wall_now() -> float:
        return wall_before + time.perf_counter() - t_start

    if is_main and start == 0 and cfg.eval_every:
        record = evaluate(0, wall_now())
        log.row({"step": 0, **_val_columns(record, scenes)})
        _write_json(out / "log.json", summary("running", 0, wall_now()))
    _barrier(world)

    bar = tqdm(
        total=total,
        initial=start,
        desc="train",
        unit="step",
        disable=not (bars_enabled(cfg.progress) and is_main),
        dynamic_ncols=True,
    )
    end = total if cfg.stop_at is None else min(cfg.stop_at, total)
    every = (
        default_checkpoint_every(total) if cfg.checkpoint_every is None else cfg.checkpoint_every
    )
    pool = ThreadPoolExecutor(max_workers=1)
    pending = pool.submit(load, start) if start < end else None
    step = start
    loss_value = math.nan
    try:
        for step0 in range(start, end):
            t0 = time.perf_counter()
            samples = pending.result()
            pending = pool.submit(load, step0 + 1) if step0 + 1 < end else None
            groups = train_matrices.groups(samples)
            optimizer.zero_grad(set_to_none=True)
            loss_sum = loss_module(groups)
            (loss_sum * (world / cfg.batch_size)).backward()
            lr_used = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            summed = loss_sum.detach().float()
            if world > 1:
                import torch.distributed as dist

                dist.all_reduce(summed)
            loss_value = float(summed) / cfg.batch_size
            if not math.isfinite(loss_value):
                raise ValueError(
                    f"training diverged at step {step0 + 1}: the loss is {loss_value} "
                    f"(lr {lr_used:g}); lower --lr or add --warmup"
                )
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            dt = time.perf_counter() - t0
            samples_seen_time[0] += dt
            samples_seen_time[1] += cfg.batch_size
            recent.append(loss_value)
            step = step0 + 1
            sps = cfg.batch_size / dt
            row = {
                "step": step,
                "loss": _fmt(loss_value),
                "lr": _fmt(lr_used),
                "samples_per_s": f"{sps:.3f}",
                "time_s": f"{wall_now():.3f}",
            }
            if is_main:
                bar.set_postfix(
                    loss=f"{np.mean(recent):.4g}",
                    lr=f"{lr_used:.2e}",
                    sps=f"{sps:.1f}",
                    refresh=False,
                )
                bar.update(1)
            eval_due = cfg.eval_every and (step % cfg.eval_every == 0 or step == total)
            if is_main and eval_due:
                record = evaluate(step, wall_now())
                row.update(_val_columns(record, scenes))
                bar.write(_eval_line(record))
            if is_main:
                log.row(row)
                if eval_due:
                    _write_json(out / "log.json", summary("running", step, wall_now()))
            if eval_due:
                _barrier(world)
            if (every and step % every == 0) or step == total or step == cfg.stop_at:
                checkpoint(step, wall_now())
    finally:
        bar.close()
        pool.shutdown(wait=True, cancel_futures=True)
        if log is not None:
            log.close()

    finished = step >= total
    best_dir = last_dir = None
    wall = wall_now()
    if is_main:
        if finished:
            if best is None:  # no evaluation at all: the final model is the best one
                record = {
                    "step": step,
                    "train_loss": float(np.mean(recent)) if recent else None,
                    "val_loss": None,
                    "val_dcdm_mean": None,
                    "scenes": [],
                }
                best = record
                save_solver(out / "best", net, card(step, record, wall))
            last_record = (
                evaluations[-1]
                if evaluations and evaluations[-1]["step"] == step
                else {
                    "step": step,
                    "train_loss": float(np.mean(recent)) if recent else None,
                }
            )
            final = {
                "step": step,
                "train_loss": last_record.get("train_loss"),
                "val_loss": last_record.get("val_loss"),
            }
            last_dir = save_solver(out / "last", net, card(step, last_record, wall, final))
            # the best model's card, rewritten with the run's totals (same weights)
            best_model, _ = load_solver(out / "best", device="cpu")
            best_dir = save_solver(out / "best", best_model, card(best["step"], best, wall, final))
        elif (out / "best").exists():
            best_dir = out / "best"
        _write_json(out / "log.json", summary("finished" if finished else "stopped", step, wall))
    last_eval = evaluations[-1] if evaluations else {}
    return TrainResult(
        out=out,
        steps=step,
        total_steps=total,
        finished=finished,
        train_loss=float(np.mean(recent)) if recent else None,
        val_loss=last_eval.get("val_loss"),
        best=best,
        evaluations=evaluations,
        wall_s=wall,
        samples_per_s=samples_seen_time[1] / samples_seen_time[0]
        if samples_seen_time[0]
        else math.nan,
        best_dir=best_dir,
        last_dir=last_dir,
        model=net if is_main else None,
    )
