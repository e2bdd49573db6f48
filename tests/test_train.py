"""The training loop: learning, exact resumption, optimizers and schedules, DDP, the solver
card, and clear errors. Everything runs on a tiny 16³ dataset in seconds."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from deepcd.cli import main
from deepcd.nn.dataset import generate_dataset
from deepcd.nn.networks import build_network
from deepcd.nn.train import TrainConfig, lr_factor, train
from deepcd.nn.weights import load_solver

RECIPE = Path(__file__).resolve().parents[1] / "datasets" / "tiny-16.toml"
SMALL = {"channels": [4, 8]}  # a small multilevel net


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """tiny-16: three 16³ training matrices (8 samples each), one held-out matrix."""
    out = tmp_path_factory.mktemp("data") / "tiny-16.h5"
    return generate_dataset(RECIPE, out, progress=False)


def config(dataset, out, **kw) -> TrainConfig:
    base = dict(
        dataset=str(dataset),
        arch="multilevel",
        out=str(out),
        device="cpu",
        threads=1,  # bit-identical comparisons need one fixed thread count
        config=dict(SMALL),
        lr=1e-3,
        steps=6,
        eval_every=0,
        val_scenes=[],
        val_samples=8,
        checkpoint_every=0,
        progress=False,
    )
    base.update(kw)
    return TrainConfig(**base)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "weights.safetensors"))


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    """50 Adam steps at lr 1e-3, evaluated before and after on the val split and one scene."""
    out = tmp_path_factory.mktemp("run") / "run"
    cfg = config(
        dataset,
        out,
        steps=50,
        eval_every=50,
        val_scenes=["pool:12:3"],
        command="deepcd train --dataset tiny-16.h5 --arch multilevel --steps 50",
    )
    return train(cfg)


def test_training_lowers_validation_loss(trained):
    first, last = trained.evaluations[0], trained.evaluations[-1]
    assert (first["step"], last["step"]) == (0, 50)
    assert trained.finished and trained.steps == 50
    assert last["val_loss"] < 0.95 * first["val_loss"]
    assert trained.samples_per_s > 0
    assert torch.get_num_threads() == 1  # validation's numba kernels must not change it


def test_best_solver_card_and_logs(trained):
    model, card = load_solver(trained.out / "best")
    assert card["arch"] == "multilevel" and card["config"]["channels"] == SMALL["channels"]
    assert card["command"].startswith("deepcd train --dataset tiny-16.h5")
    table = card["validation"]["table"]
    assert len(table) == 1
    row = table[0]
    assert (row["scene"], row["shape"], row["seed"]) == ("pool", [12, 12, 12], 3)
    assert row["dcdm_iterations"] > 0 and row["cg_iterations"] > 0
    assert card["dataset"]["file"] == "tiny-16.h5" and "[[matrices]]" in card["dataset"]["recipe"]
    assert card["flops_per_unknown"]["16x16x16"] > 0 and card["parameters"] > 0
    assert card["hardware"]["torch"] == torch.__version__ and card["hardware"]["threads"] == 1
    assert card["val_loss"] is not None and card["wall_time_s"] > 0
    assert card["final"]["step"] == 50 and card["final"]["val_loss"] == trained.val_loss
    # the best is the evaluation with the fewest mean DCDM iterations (ties: val loss)
    key = [(e["val_dcdm_mean"], e["val_loss"]) for e in trained.evaluations]
    assert card["step"] == trained.evaluations[key.index(min(key))]["step"]
    last_model, last_card = load_solver(trained.out / "last")
    assert last_card["step"] == 50 and last_card["train_loss"] is not None
    x = torch.randn(1, 1, 16, 16, 16)
    torch.testing.assert_close(last_model(x), trained.model.eval()(x))
    # log.csv: a row per step plus step 0; log.json: the summary
    rows = (trained.out / "log.csv").read_text().splitlines()
    assert rows[0].startswith("step,loss,lr,samples_per_s") and len(rows) == 1 + 51
    summary = json.loads((trained.out / "log.json").read_text())
    assert summary["status"] == "finished" and len(summary["evaluations"]) == 2
    assert summary["cg_iterations"] == {"pool:12x12x12:3": row["cg_iterations"]}
    assert model.dim == 3


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_killed_and_resumed_run_is_bit_identical(dataset, tmp_path):
    n = 8
    whole = train(config(dataset, tmp_path / "whole", steps=n, batch_size=5))
    # constant schedule: stop after n/2 steps, then resume with more steps
    train(config(dataset, tmp_path / "split", steps=n // 2, batch_size=5))
    resumed = train(config(dataset, tmp_path / "split", steps=n, batch_size=5, resume=True))
    assert resumed.steps == n and resumed.finished
    assert _same(weights(tmp_path / "whole" / "last"), weights(tmp_path / "split" / "last"))
    assert resumed.train_loss == whole.train_loss
    log = (tmp_path / "split" / "log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in log[1:]] == [str(i) for i in range(1, n + 1)]


def test_sigkilled_process_resumes_bit_identically(dataset, tmp_path):
    """A real kill (SIGKILL, at an arbitrary point — checkpoints are written every step)."""
    n = 100
    out = tmp_path / "killed"
    args = ["--dataset", str(dataset), "--arch", "multilevel", "--config", "channels=[4,8]",
            "--steps", str(n), "--lr", "1e-3", "--eval-every", "0", "--val-scene", "none",
            "--val-samples", "8", "--device", "cpu", "--threads", "1", "--no-progress"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "deepcd.cli", "train", *args, "--out", str(out),
         "--checkpoint-every", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoint" / "state.json").exists() and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.1)
        proc.kill()
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL  # killed mid-run, not finished
    ckpt = out / "checkpoint" if (out / "checkpoint").exists() else out / ".checkpoint.old"
    assert 0 < json.loads((ckpt / "state.json").read_text())["step"] < n
    resumed = train(config(dataset, out, steps=n, resume=True))
    whole = train(config(dataset, tmp_path / "whole", steps=n))
    assert resumed.finished and resumed.steps == whole.steps == n
    assert _same(weights(out / "last"), weights(tmp_path / "whole" / "last"))
    steps = [r.split(",")[0] for r in (out / "log.csv").read_text().splitlines()[1:]]
    assert steps == [str(i) for i in range(1, n + 1)]  # no row twice, none missing


def test_checkpoint_is_safetensors_and_json_and_survives_an_interrupted_swap(dataset, tmp_path):
    out = tmp_path / "r"
    train(config(dataset, out, epochs=1.0, steps=None))  # 24 samples / batch 4 = 6 steps
    ckpt = out / "checkpoint"
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "model.safetensors",
        "optimizer.safetensors",
        "state.json",
    ]
    state = json.loads((ckpt / "state.json").read_text())
    assert state["step"] == 6 and state["args"]["optimizer"] == "adam"
    assert state["optimizer"]["param_groups"][0]["lr"] == 1e-3
    # a kill between the two renames of the swap leaves only .checkpoint.old: resume uses it
    ckpt.rename(out / ".checkpoint.old")
    result = train(config(dataset, out, epochs=2.0, steps=None, resume=True))
    assert result.steps == 12 and ckpt.exists() and not (out / ".checkpoint.old").exists()


def test_killed_mid_schedule_and_resumed_is_bit_identical(dataset, tmp_path):
    kw = dict(steps=8, optimizer="lion", schedule="linear", warmup=2, checkpoint_every=3)
    train(config(dataset, tmp_path / "whole", **kw))
    stopped = train(config(dataset, tmp_path / "split", stop_at=5, **kw))
    assert not stopped.finished and stopped.steps == 5
    assert not (tmp_path / "split" / "last").exists()
    train(config(dataset, tmp_path / "split", resume=True, **kw))
    assert _same(weights(tmp_path / "whole" / "last"), weights(tmp_path / "split" / "last"))
    a = load_file(str(tmp_path / "whole" / "checkpoint" / "optimizer.safetensors"))
    b = load_file(str(tmp_path / "split" / "checkpoint" / "optimizer.safetensors"))
    assert _same(a, b)


@pytest.mark.parametrize(
    ("optimizer", "schedule"),
    list(itertools.product(["adam", "lion", "diffgrad"], ["constant", "linear", "cosine"])),
)
def test_every_optimizer_and_schedule_trains(dataset, tmp_path, optimizer, schedule):
    result = train(
        config(dataset, tmp_path / "r", steps=3, optimizer=optimizer, schedule=schedule, warmup=1)
    )
    torch.manual_seed(0)
    initial = build_network("multilevel", 3, **SMALL).state_dict()
    trained = weights(tmp_path / "r" / "last")
    assert any(not torch.equal(initial[k], trained[k]) for k in initial)
    lrs = [float(r.split(",")[2]) for r in (tmp_path / "r" / "log.csv").read_text().split()[1:]]
    assert lrs == pytest.approx([1e-3 * lr_factor(s, schedule, 1, 3) for s in range(3)])
    assert result.finished


@pytest.mark.parametrize("loss", ["residual", "pcg"])
def test_vcycle_trains_with_each_loss_and_lowers_it(dataset, tmp_path, loss):
    """The shipped architecture and losses: the validation loss goes down in 20 steps."""
    result = train(
        config(
            dataset,
            tmp_path / "v",
            arch="vcycle",
            config={"smooth": 1, "degree": 4, "coarsest": 2},
            loss=loss,
            lr=1e-2,
            steps=20,
            eval_every=20,
        )
    )
    first, last = result.evaluations[0]["val_loss"], result.evaluations[-1]["val_loss"]
    assert last < first
    card = json.loads((tmp_path / "v" / "last" / "card.json").read_text())
    assert card["training"]["loss"] == loss


def test_lr_schedules():
    assert [lr_factor(s, "linear", 0, 4) for s in range(5)] == [1, 0.75, 0.5, 0.25, 0]
    assert lr_factor(0, "cosine", 2, 10) == 0.5 and lr_factor(2, "cosine", 2, 10) == 1
    assert lr_factor(10, "cosine", 2, 10) == pytest.approx(0)
    assert lr_factor(7, "constant", 0, 10) == 1


def test_ddp_two_cpu_processes(dataset, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "deepcd.cli", "train", "--dataset", str(dataset), "--arch", "multilevel",
        "--config", "channels=[4,8]", "--out", str(out), "--steps", "3", "--batch-size", "4",
        "--lr", "1e-3", "--eval-every", "3", "--val-scene", "none", "--threads", "1",
        "--device", "cpu", "--no-progress",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _, card = load_solver(out / "best")
    assert card["hardware"]["world_size"] == 2 and card["val_loss"] is not None
    assert load_solver(out / "last")[1]["step"] == 3
    rows = (out / "log.csv").read_text().splitlines()
    assert len(rows) == 1 + 4  # header, step 0 (evaluation), steps 1-3: rank 0 alone writes
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["step"] == 3 and state["world_size"] == 2


# ---------------------------------------------------------------------------------------------
# errors


def test_cli_trains_and_reports(dataset, tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(
        ["train", "--dataset", str(dataset), "--arch", "multilevel", "--config", "channels=[4,8]",
         "--out", str(out), "--steps", "2", "--eval-every", "2", "--val-scene", "none",
         "--val-samples", "4", "--threads", "1", "--no-progress"]
    )  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    assert "finished at step 2/2" in text and "best model: step" in text
    card = json.loads((out / "best" / "card.json").read_text())
    assert card["command"].startswith("deepcd train --dataset ")
    assert "--config 'channels=[4,8]'" in card["command"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"arch": "resnet"}, "unknown architecture 'resnet'"),
        ({"optimizer": "sgd"}, "unknown optimizer 'sgd'"),
        ({"schedule": "step"}, "unknown schedule 'step'"),
        ({"safeguard": "amg"}, "unknown safeguard 'amg'"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"config": {"chanels": [4]}}, "does not fit architecture 'multilevel'"),
        ({"val_scenes": ["bunny:16"]}, "NAME:SHAPE:SEED"),
        ({"val_scenes": ["teapot:16:0"]}, "unknown scene 'teapot'"),
        ({"val_scenes": ["bunny:16x16:0"]}, "is 2D but the dataset"),
        ({"bf16": True, "device": "cpu"}, "needs a CUDA device"),
    ],
)
def test_bad_arguments(dataset, tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        train(config(dataset, tmp_path / "r", **change))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_gpu(dataset, tmp_path, capsys):
    with pytest.raises(ValueError, match="CUDA is not available"):
        train(config(dataset, tmp_path / "r", device="cuda"))
    args = ["train", "--dataset", str(dataset), "--arch", "multilevel", "--out", str(tmp_path)]
    assert main([*args, "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_missing_dataset_and_unknown_names_on_the_cli(tmp_path, capsys):
    base = ["train", "--arch", "multilevel", "--out", str(tmp_path / "r")]
    assert main([*base, "--dataset", str(tmp_path / "nope.h5")]) == 2
    assert "no dataset file" in capsys.readouterr().err
    assert main([*base[:1], "--dataset", "x.h5", "--arch", "unet", "--out", "r"]) == 2
    assert "unknown architecture 'unet'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--dataset", "x.h5", "--optimizer", "sgd"])
    assert "invalid choice: 'sgd'" in capsys.readouterr().err


def test_resume_refuses_other_arguments_and_bad_checkpoints(dataset, tmp_path):
    out = tmp_path / "r"
    with pytest.raises(ValueError, match="holds no checkpoint"):
        train(config(dataset, out, resume=True))
    train(config(dataset, out, steps=2))
    with pytest.raises(ValueError, match="already holds a training run"):
        train(config(dataset, out, steps=2))
    with pytest.raises(ValueError, match=r"arguments differ.*lr: checkpoint 0.001, now 0.002"):
        train(config(dataset, out, steps=4, lr=2e-3, resume=True))
    with pytest.raises(ValueError, match="seed"):
        train(config(dataset, out, steps=4, seed=1, resume=True))
    # a truncated tensor file, then a half-written folder
    ckpt = out / "checkpoint"
    data = (ckpt / "optimizer.safetensors").read_bytes()
    (ckpt / "optimizer.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"corrupt: optimizer\.safetensors does not match"):
        train(config(dataset, out, steps=4, resume=True))
    (ckpt / "state.json").unlink()
    with pytest.raises(ValueError, match="incomplete"):
        train(config(dataset, out, steps=4, resume=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_bf16_tf32(dataset, tmp_path):
    result = train(
        config(
            dataset, tmp_path / "r", device="cuda", bf16=True, tf32=True, steps=4, eval_every=4,
            val_scenes=["pool:12:3"],
        )
    )  # fmt: skip
    assert result.finished and result.val_loss is not None
    _, card = load_solver(tmp_path / "r" / "best")
    assert card["hardware"]["device"] == "cuda" and card["training"]["inference"] == "bf16-autocast"


def test_checkpoints_by_default_and_always_at_the_end(dataset, tmp_path, monitor_checkpoints):
    """Issue 14.4: the README's command (--steps 300) never checkpointed (the default was
    every 1000 steps): now a tenth of the run, at most 100 steps, and the last step."""
    from deepcd.nn.train import default_checkpoint_every

    assert default_checkpoint_every(300) == 30 and default_checkpoint_every(5) == 1
    assert default_checkpoint_every(10**6) == 100
    train(config(dataset, tmp_path / "r", steps=25, checkpoint_every=None))
    assert monitor_checkpoints == [2 * i for i in range(1, 13)] + [25]


@pytest.fixture
def monitor_checkpoints(monkeypatch):
    import deepcd.nn.train.checkpoints as ckpt  # the loop calls ckpt.save_checkpoint

    steps: list[int] = []
    real = ckpt.save_checkpoint

    def spy(out, net, optimizer, scheduler, record):
        steps.append(record["step"])
        return real(out, net, optimizer, scheduler, record)

    monkeypatch.setattr(ckpt, "save_checkpoint", spy)
    return steps


def test_run_killed_before_its_first_checkpoint_restarts(dataset, tmp_path, capsys):
    """Issue 14.4: a run killed before any checkpoint left a folder that blocked both a rerun
    and --resume; both now start it again from step 0."""
    out = tmp_path / "killed"
    args = ["--dataset", str(dataset), "--arch", "multilevel", "--config", "channels=[4,8]",
            "--lr", "1e-3", "--eval-every", "0", "--val-scene", "none",
            "--val-samples", "8", "--device", "cpu", "--threads", "1", "--no-progress"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "deepcd.cli", "train", *args, "--out", str(out),
         "--steps", "100000", "--checkpoint-every", "0"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        log = out / "log.csv"
        while proc.poll() is None and not (log.exists() and len(log.read_text().split()) > 2):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        proc.kill()
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "checkpoint").exists() and (out / "log.csv").exists()
    assert main(["train", *args, "--out", str(out), "--steps", "3", "--resume"]) == 0
    assert "interrupted before its first checkpoint" in capsys.readouterr().err
    steps = [r.split(",")[0] for r in (out / "log.csv").read_text().splitlines()[1:]]
    assert steps == ["1", "2", "3"]
    # a plain rerun of a folder in that state works too
    (tmp_path / "again").mkdir()
    (tmp_path / "again" / "log.csv").write_text((out / "log.csv").read_text())
    assert main(["train", *args, "--out", str(tmp_path / "again"), "--steps", "3"]) == 0
    # a finished run is still never overwritten
    assert main(["train", *args, "--out", str(out), "--steps", "3"]) == 2
    assert "already holds a training run" in capsys.readouterr().err
