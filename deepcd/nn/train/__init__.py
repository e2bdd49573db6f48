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

from deepcd.nn.train.checkpoints import checkpoint_dir, load_checkpoint, save_checkpoint
from deepcd.nn.train.config import (
    CHECKPOINT,
    CHECKPOINT_FORMAT,
    DEFAULT_LR,
    DEFAULT_STEPS,
    DEVICES,
    LOG_FORMAT,
    LOSS_WINDOW,
    MODEL_FILE,
    OPTIMIZERS,
    SAFEGUARDS,
    SCHEDULES,
    STATE_JSON,
    STATE_TENSORS,
    VAL_RTOL,
    TrainConfig,
    TrainResult,
    command_line,
    default_checkpoint_every,
    lr_factor,
    make_optimizer,
)
from deepcd.nn.train.data import batch_loss
from deepcd.nn.train.loop import train
from deepcd.nn.train.validation import ValScene

__all__ = [
    "CHECKPOINT",
    "CHECKPOINT_FORMAT",
    "DEFAULT_LR",
    "DEFAULT_STEPS",
    "DEVICES",
    "LOG_FORMAT",
    "LOSS_WINDOW",
    "MODEL_FILE",
    "OPTIMIZERS",
    "SAFEGUARDS",
    "SCHEDULES",
    "STATE_JSON",
    "STATE_TENSORS",
    "VAL_RTOL",
    "TrainConfig",
    "TrainResult",
    "ValScene",
    "batch_loss",
    "checkpoint_dir",
    "command_line",
    "default_checkpoint_every",
    "load_checkpoint",
    "lr_factor",
    "make_optimizer",
    "save_checkpoint",
    "train",
]
