"""DP-SGD on several processes (Lightning DDP): one noisy update for the whole logical batch.

With `trainer.strategy=ddp trainer.devices=W` (× `trainer.num_nodes`), every rank runs the
whole `radpriv train` command (Lightning's launcher starts ranks 1..W-1 by re-running it), and
one DP-SGD step over a logical batch B = B_0 ∪ … ∪ B_{W-1} is

    rank r:  B_r = its own Poisson draw of rate q over its shard (radpriv/data/distributed_sampling.py)
             s_r = Σ_{i∈B_r} clip_C(∇ℓ_i)                  (per-sample clipping on every rank)
    rank 0:  s_0 + N(0, σ²C² I)                             (noise ONCE, on rank 0 only)
    all:     g = all_reduce_sum(...) / b                    (b: the global expected batch size)

which is exactly the single-process update `(Σ_{i∈B} clip_C(∇ℓ_i) + N(0, σ²C² I)) / b` of
radpriv/privacy/dp_step.py with B a Poisson sample of rate q of the whole training split. The
accountant (on every rank, identical) is fed the global q and counts one step per update, so ε
is that of the single-process run with the same logical configuration.

The reduction is Opacus' own `DistributedDPOptimizer` (noise on rank 0 only; all-reduce SUM of
the noisy or plain clipped sums, then / world_size), built with the per-rank expected batch size
b / W — the same convention as Opacus' `PrivacyEngine` for distributed models — so the overall
division is by b.

Why Lightning's stock `DDPStrategy` is not used: it wraps the module in torch's
`DistributedDataParallel`, whose backward hooks all-reduce `p.grad` after *every* backward
call. Under DP a rank runs one backward per physical chunk of its own Poisson draw, so the
ranks run different numbers of backward calls (none at all for an empty draw): DDP's hooks
would hang or fail, and even when they line up they would average a gradient that DP-SGD then
discards (Opacus builds the update from the per-sample gradients). `ExplicitSyncDDPStrategy`
is DDPStrategy (process group, launcher, ranks, rank-0 checkpointing and logging) without the
DDP wrapper: the model's states are broadcast from rank 0 once, and the one gradient
all-reduce per step is done by the optimizer (DP) or by `DistributedPlainStep` (non-private).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import replace
from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.overrides.distributed import _sync_module_states
from lightning.pytorch.strategies import DDPStrategy
from torch.nn.parallel import DistributedDataParallel

from radpriv.errors import ConfigError, PrivacyError

# how rank 0 hands its resume decision to the ranks its launcher starts (they copy its environment)
RESUME_HANDOFF = "RADPRIV_DDP_RESUME"


# -- the strategy --------------------------------------------------------------------------------
class ExplicitSyncDDPStrategy(DDPStrategy):
    """Lightning's DDP without torch's DDP wrapper: gradients are reduced once per step, explicitly."""

    def __init__(self, **kwargs):
        super().__init__(start_method="popen", **kwargs)
        # every rank evaluates the whole validation/test split (identical values): Lightning's
        # advice to sync epoch-level metrics across ranks does not apply
        warnings.filterwarnings("ignore", message=".*sync_dist=True.*")

    def configure_ddp(self) -> None:
        # no DistributedDataParallel: every rank starts from rank 0's weights, and the step runner
        # (DPStep + DistributedDPOptimizer, or DistributedPlainStep) does the one all-reduce
        _sync_module_states(self.model)


def planned_world_size(trainer_cfg) -> int | None:
    """devices × num_nodes from the config (None when Lightning decides, e.g. devices=auto)."""
    devices = trainer_cfg["devices"]
    nodes = int(trainer_cfg["num_nodes"])
    if isinstance(devices, int) or (isinstance(devices, str) and devices.strip().isdigit()):
        n = int(devices)
    elif isinstance(devices, str) and "," in devices:
        n = len([d for d in devices.split(",") if d.strip()])
    elif hasattr(devices, "__len__") and not isinstance(devices, str):
        n = len(devices)
    else:
        return None
    return max(n, 1) * nodes


def make_strategy(trainer_cfg):
    """`trainer.strategy` → what Lightning's Trainer gets: "auto" (one process) or ExplicitSyncDDPStrategy."""
    name = str(trainer_cfg["strategy"])
    nodes = int(trainer_cfg["num_nodes"])
    if nodes < 1:
        raise ConfigError(f"trainer.num_nodes={nodes}: must be ≥ 1")
    world = planned_world_size(trainer_cfg)
    if name == "ddp" or (name == "auto" and (nodes > 1 or (world or 1) > 1)):
        return ExplicitSyncDDPStrategy()
    if name == "auto":
        return "auto"
    raise ConfigError(
        f"trainer.strategy={name!r}: radpriv supports auto (one process) and ddp (one process per "
        "device, launched by re-running the command); see docs/SCALING.md")


def check_trainer(trainer: L.Trainer) -> None:
    """Refuse a multi-process trainer that does not reduce gradients the way DP-SGD needs."""
    if trainer.world_size > 1 and not isinstance(trainer.strategy, ExplicitSyncDDPStrategy):
        raise ConfigError(f"{trainer.world_size} processes under trainer.strategy="
                          f"{type(trainer.strategy).__name__}: use trainer.strategy=ddp")


# -- the DP update -------------------------------------------------------------------------------
def distributed_dp_optimizer(optimizer, plan, model=None, randomness=None):
    """Opacus' DistributedDPOptimizer for `plan` on the current process group, its noise (rank 0
    only) from `randomness` (radpriv.privacy.randomness.PrivateRandomness; None: a fresh one).

    `model`: what the strategy trains (refused if torch's DDP wrapper, see the module docstring).

    expected_batch_size = b / W: Opacus divides each rank's (noisy) clipped sum by it and the
    all-reduced sum by W, so the applied gradient is (Σ_ranks clipped sums + one noise) / b.
    """
    if isinstance(model, DistributedDataParallel):
        raise PrivacyError("DP training under torch's DistributedDataParallel wrapper would reduce "
                           "gradients per backward call: use trainer.strategy=ddp through radpriv")
    if not (dist.is_available() and dist.is_initialized()):
        raise PrivacyError("distributed DP training needs an initialised torch.distributed process group")
    from radpriv.privacy.dp_step import NoisyDistributedDPOptimizer
    from radpriv.privacy.randomness import PrivateRandomness

    world = dist.get_world_size()
    return NoisyDistributedDPOptimizer(
        optimizer,
        randomness=randomness if randomness is not None else PrivateRandomness(plan.secure_mode),
        noise_multiplier=plan.noise_multiplier,
        max_grad_norm=plan.max_grad_norm,
        expected_batch_size=plan.expected_batch_size / world,
        loss_reduction="mean",
    )


# -- the non-private update ----------------------------------------------------------------------
class DistributedPlainStep:
    """Non-private step over the union of the ranks' batches: Σ losses / total count, one update."""

    def __call__(self, module, optimizer, batch) -> float:
        total = 0.0
        for chunk in batch.chunks:
            losses = module.chunk_losses(chunk)
            module.manual_backward(losses.sum())
            total += float(losses.detach().sum())
        params = [p for group in getattr(optimizer, "optimizer", optimizer).param_groups
                  for p in group["params"] if p.requires_grad]
        count = torch.tensor([float(batch.size)], device=params[0].device)  # NCCL: on the device
        dist.all_reduce(count)
        for p in params:
            if p.grad is None:  # an empty local batch: this rank adds nothing to the sum
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
            p.grad /= max(float(count), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        return total


class RankAgreement(L.Callback):
    """Keeps the ranks of one run in lockstep, or stops it with a clear error.

    At fit start: non-private runs get `DistributedPlainStep` (the DP callback, earlier in the
    list, has already installed DPStep). At train start (after a checkpoint is restored): every
    rank must be at the same epoch and step, or their step counts — and ε — would differ.
    """

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from radpriv.model.module import PlainStep

        if type(pl_module.step_runner) is PlainStep:
            pl_module.step_runner = DistributedPlainStep()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        mine = (trainer.current_epoch, trainer.global_step)
        every = [None] * trainer.world_size
        dist.all_gather_object(every, mine)
        if len(set(every)) != 1:
            raise ConfigError(f"the ranks start from different points (epoch, step) {every}: they "
                              "resumed from different checkpoints; put tracking.checkpoint_dir on "
                              "storage every rank shares, or set tracking.checkpoint_dir=null")


class CollectiveEpochEndCheckpoint(L.Callback):
    """The epoch-end checkpoint of radpriv.tracking.resume under DDP.

    `trainer.save_checkpoint` is a collective (rank 0 writes, then every rank meets at a
    barrier), so every rank calls it; rank 0 alone writes the file and renames it into place
    (atomically, as the single-process EpochEndCheckpoint does).
    """

    def __init__(self, directory: Path, filename: str):
        self.directory = Path(directory)
        self.filename = filename

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        tmp = self.directory / (self.filename + ".tmp")
        if trainer.is_global_zero:
            self.directory.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(tmp, weights_only=False)  # optimizer + accountant state: needed to resume
        if trainer.is_global_zero:
            os.replace(tmp, self.directory / self.filename)


# -- what only rank 0 decides --------------------------------------------------------------------
def agree_on_resume(trainer_cfg, point):
    """The resume point rank 0 chose, on every rank (None: checkpoints off).

    Ranks 1..W-1 start later than rank 0 (when its fit begins) and would read the checkpoint
    folder after rank 0 has already recorded its new run there; so rank 0 hands its decision
    (which checkpoint, if any) down through the environment its launcher copies. Launchers that
    start ranks independently (torchrun, SLURM, several nodes) get no such handoff: refused.
    """
    if point is None:
        return None
    world = planned_world_size(trainer_cfg)
    if world == 1 or (world is None and str(trainer_cfg["strategy"]) != "ddp"):
        return point
    handed = os.environ.get(RESUME_HANDOFF)
    if handed:
        state = json.loads(handed)
        if state["launcher_pid"] != os.getpid():  # a rank started by rank 0's launcher
            ckpt = state["checkpoint"]
            return replace(point, checkpoint=Path(ckpt) if ckpt else None)
    elif "LOCAL_RANK" in os.environ or int(trainer_cfg["num_nodes"]) > 1:
        raise ConfigError("resuming needs every rank to be started by radpriv's own launcher on one "
                          "node: with torchrun, SLURM or trainer.num_nodes > 1 set "
                          "tracking.checkpoint_dir=null (docs/SCALING.md)")
    os.environ[RESUME_HANDOFF] = json.dumps(
        {"launcher_pid": os.getpid(), "checkpoint": str(point.checkpoint) if point.checkpoint else ""})
    return point


def summary_from_rank_zero(trainer: L.Trainer, summary: dict | None = None) -> dict | None:
    """rank 0's run summary on every rank (only rank 0 wrote the MLflow run), then the end of
    the process group: the run's last collective (Lightning's launcher starts the other ranks
    once per command, so a process trains one DDP run)."""
    if trainer.world_size <= 1 or not dist.is_initialized():
        return summary
    box = [summary]
    dist.broadcast_object_list(box, src=0)
    dist.destroy_process_group()
    return box[0]
