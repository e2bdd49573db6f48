"""The training loop (`train`): distributed setup, the run's hardware record, log.csv, and the
steps, evaluations, checkpoints and solver files of a run (see the package docstring,
`deepcd.nn.train`)."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import os
import platform
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepcd._version import __version__
from deepcd.hardware import cpu_name
from deepcd.nn.train import checkpoints  # save_checkpoint through its module: tests spy on it
from deepcd.nn.train.checkpoints import (
    _compare_args,
    _decode,
    _write_json,
    checkpoint_dir,
    load_checkpoint,
)
from deepcd.nn.train.config import (
    _DEFAULT_VAL,
    _DEFAULT_VAL_SHAPE,
    DEFAULT_LR,
    DEFAULT_STEPS,
    LOG_FORMAT,
    LOSS_WINDOW,
    VAL_RTOL,
    TrainConfig,
    TrainResult,
    _check_config,
    _resolve_device,
    _set_tf32,
    command_line,
    default_checkpoint_every,
    lr_factor,
    make_optimizer,
)
from deepcd.nn.train.data import _Batches, _BatchLoss, _Matrices
from deepcd.nn.train.validation import ValScene, _selection_key, _torch_threads_kept, _Validator


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
            checkpoints.save_checkpoint(out, net, optimizer, scheduler, record)
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
