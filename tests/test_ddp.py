"""DP training on several processes (Lightning DDP, CPU, gloo): sampling, noise, ε, MLflow.

The multi-process tests start real processes: `radpriv train ... trainer.strategy=ddp
trainer.devices=2`, and this file run as a script (`python -m tests.test_ddp probe <dir>`),
whose rank 1 Lightning's launcher starts by re-running the same command.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from radpriv.data.distributed_sampling import DistributedPoissonBatchSampler, DistributedShuffledBatchSampler
from radpriv.privacy.randomness import PrivateRandomness
from tests.helpers.dp import LORA
from tests.synthetic import write_fabricated_ct_csv

pytestmark = pytest.mark.integration  # make test-all (the integration tier)

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model=tiny_bert", "data=ct_rate_text", "data.max_length=48", "trainer.max_epochs=2",
        "trainer.progress_bar=false", "privacy.expected_batch_size=8", "privacy.max_physical_batch_size=4",
        "trainer.eval_batch_size=16", "trainer.accelerator=cpu", "privacy.epsilon=2"]
DDP2 = ["trainer.strategy=ddp", "trainer.devices=2"]


def env_for(workdir: Path) -> dict:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("MLFLOW_RUN_ID", None)
    return env


def runs_in(workdir: Path) -> list:
    client = mlflow.MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    return [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


# -- the samplers, one rank at a time (no process group needed) ----------------------------------
def draws(world: int, n: int, q: float, steps: int, seed: int = 0, epoch: int = 0) -> list[list[list[int]]]:
    out = []
    for rank in range(world):
        s = DistributedPoissonBatchSampler(n, q, steps, seed, rank=rank, world_size=world,
                                           randomness=PrivateRandomness())
        s.set_epoch(epoch)
        out.append(list(s))
    return out


def test_every_rank_takes_every_step_from_its_own_shard_empty_draws_included():
    n, world, q, steps = 22, 4, 0.1, 60
    for epoch in (0, 1):
        shards = []
        for rank in range(world):
            s = DistributedPoissonBatchSampler(n, q, steps, 5, rank=rank, world_size=world,
                                               randomness=PrivateRandomness())
            s.set_epoch(epoch)
            shards.append(set(s.shard().tolist()))
        assert set().union(*shards) == set(range(n)) and sum(map(len, shards)) == n  # a partition
        per_rank = draws(world, n, q, steps, seed=5, epoch=epoch)
        for rank, batches in enumerate(per_rank):
            assert len(batches) == steps  # the same step count on every rank
            assert any(len(b) == 0 for b in batches)  # empty local draws are kept, not skipped
            assert all(set(b) <= shards[rank] for b in batches)
    # the draws are fresh (never a function of the logged seed): the same epoch twice differs
    assert draws(2, 30, 0.3, 5, epoch=3) != draws(2, 30, 0.3, 5, epoch=3)


def test_the_union_of_the_ranks_draws_is_a_poisson_sample_of_rate_q():
    """Each report joins independently with probability q: inclusion rate q for every report,
    union size Binomial(N, q), and no dependence between the ranks' draws."""
    n, world, q, steps = 40, 2, 0.2, 4000
    per_rank = draws(world, n, q, steps, seed=1)
    counts = np.zeros(n)
    union_sizes, rank_sizes = [], np.zeros((world, steps))
    for t in range(steps):
        union = [i for rank in range(world) for i in per_rank[rank][t]]
        assert len(union) == len(set(union))
        counts[union] += 1
        union_sizes.append(len(union))
        for rank in range(world):
            rank_sizes[rank, t] = len(per_rank[rank][t])
    sd = np.sqrt(q * (1 - q) / steps)
    assert np.all(np.abs(counts / steps - q) < 4.5 * sd)
    sizes = np.asarray(union_sizes)
    assert abs(sizes.mean() - n * q) < 4 * np.sqrt(n * q * (1 - q) / steps)
    assert abs(sizes.var() / (n * q * (1 - q)) - 1) < 0.1
    assert abs(np.corrcoef(rank_sizes)[0, 1]) < 0.06


def test_at_the_patient_unit_ranks_draw_whole_patients_and_the_union_is_poisson_over_patients():
    """Patients, not reports, are dealt to the ranks: a patient's reports are on one rank, and over
    the ranks' draws every patient joins a step with probability q."""
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 7, size=30)
    members = tuple(np.arange(sum(sizes[:p]), sum(sizes[:p + 1])) for p in range(len(sizes)))
    patient_of = np.concatenate([np.full(k, p) for p, k in enumerate(sizes)])
    world, q, steps = 3, 0.25, 1500
    per_rank = []
    for rank in range(world):
        s = DistributedPoissonBatchSampler(len(members), q, steps, 7, rank=rank, world_size=world,
                                           randomness=PrivateRandomness(), groups=members)
        per_rank.append(list(s))
    joined = np.zeros(len(members))
    for t in range(steps):
        rows = [i for rank in range(world) for i in per_rank[rank][t]]
        patients = set(patient_of[rows].tolist())
        for p in patients:  # whole patients, each from exactly one rank
            assert sorted(i for i in rows if patient_of[i] == p) == members[p].tolist()
            assert sum(any(patient_of[i] == p for i in per_rank[r][t]) for r in range(world)) == 1
            joined[p] += 1
    assert np.all(np.abs(joined / steps - q) < 4.5 * np.sqrt(q * (1 - q) / steps))


def test_non_private_batches_are_the_single_process_batches_dealt_out_to_the_ranks():
    n, b, world = 23, 5, 3
    samplers = [DistributedShuffledBatchSampler(n, b, 7, rank=r, world_size=world) for r in range(world)]
    per_rank = [list(s) for s in samplers]
    assert all(len(batches) == len(samplers[0]) == 5 for batches in per_rank)
    seen = [i for batches in per_rank for batch in batches for i in batch]
    assert sorted(seen) == list(range(n))  # every report once per epoch
    for t in range(5):  # each global batch has at most b reports, split across the ranks
        assert sum(len(per_rank[r][t]) for r in range(world)) == min(b, n - t * b)
    from radpriv.data.sampling import ShuffledBatchSampler

    single = list(ShuffledBatchSampler(n, b, 7))  # the ranks' parts make up the one-process batches
    assert [sorted(i for r in range(world) for i in per_rank[r][t]) for t in range(5)] == [sorted(x) for x in single]


# -- two processes -------------------------------------------------------------------------------
@pytest.mark.timeout(300)
def test_two_processes_spend_the_epsilon_and_steps_of_one_and_only_rank_0_logs(tmp_path, tracking_uri,
                                                                              capsys):
    """The same logical configuration on 1 and on 2 processes: same privacy plan, same ε and
    step count; the 2-process run is one MLflow run (rank 0's), complete, with the same
    artifacts and privacy.json as a single-process run."""
    from radpriv.cli import run

    csv_path = tmp_path / "reports.csv"
    write_fabricated_ct_csv(csv_path, n=60)
    ddp_dir = tmp_path / "ddp"
    ddp_dir.mkdir()
    proc = subprocess.run([sys.executable, "-m", "radpriv.cli", "train", *TINY, *DDP2,
                           f"data.path={csv_path}", "tracking.log_model=false"],
                          cwd=ddp_dir, env=env_for(ddp_dir), text=True, capture_output=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in proc.stderr
    lines = [json.loads(ln) for ln in proc.stdout.strip().splitlines() if ln.startswith("{")]
    assert len(lines) == 1  # rank 1 returns the same summary but prints nothing

    assert run(["train", *TINY, f"data.path={csv_path}", "tracking.log_model=false"]) == 0
    single = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    (ddp_run,) = runs_in(ddp_dir)  # rank 1 wrote no run
    assert ddp_run.info.run_id == lines[0]["run_id"] and ddp_run.info.status == "FINISHED"
    assert ddp_run.data.tags["radpriv.complete"] == "true"
    m2 = ddp_run.data.metrics
    m1 = mlflow.MlflowClient(tracking_uri).get_run(single["run_id"]).data.metrics
    for key in ("privacy/noise_multiplier", "privacy/sample_rate", "privacy/steps", "privacy/delta"):
        assert m2[key] == m1[key], key
    assert m2["privacy/epsilon"] == pytest.approx(m1["privacy/epsilon"], rel=1e-9)
    assert 0.99 * 2 <= m2["privacy/epsilon"] <= 2
    assert ddp_run.data.params["trainer.strategy"] == "ddp" and ddp_run.data.params["trainer.devices"] == "2"
    local = Path(mlflow.artifacts.download_artifacts(run_id=ddp_run.info.run_id, dst_path=str(tmp_path / "a"),
                                                     tracking_uri=f"sqlite:///{ddp_dir / 'mlflow.db'}"))
    privacy = json.loads((local / "privacy.json").read_text())
    assert privacy["steps"] == privacy["planned_steps"] == m1["privacy/steps"]
    (state,) = ddp_dir.glob("checkpoints/*/run.json")  # written by rank 0 alone, naming its run
    assert json.loads(state.read_text())["run_id"] == ddp_run.info.run_id
    assert not any(k.startswith("train/loss") for k in m2)


@pytest.mark.timeout(300)
def test_noise_is_added_once_to_the_summed_gradient(tmp_path):
    """Zero-gradient reports (every label masked), SGD with lr 1: each update is the noise
    alone, N(0, (σC/b)²) per coordinate, identical on both ranks. The same probe with noise
    added on every rank (the wrong design) is √2 too noisy and must fail the same check. The
    probe also checks, with σ = 0, that one distributed step equals the single-process step
    over the union of the ranks' reports (DP and non-private)."""
    proc = subprocess.run([sys.executable, "-m", "tests.test_ddp", "probe", str(tmp_path)], cwd=ROOT,
                          env=env_for(tmp_path), text=True, capture_output=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plan = json.loads((tmp_path / "plan.json").read_text())
    expected = plan["noise_multiplier"] * plan["max_grad_norm"] / plan["expected_batch_size"]
    ratios = {}
    for design in ("once", "every_rank"):
        d0 = torch.load(tmp_path / f"{design}_rank0.pt")
        d1 = torch.load(tmp_path / f"{design}_rank1.pt")
        assert d0.shape[0] == plan["planned_steps"] and d0.shape[1] > 1000
        assert torch.equal(d0, d1), "the ranks applied different updates"
        ratios[design] = float(d0.std()) / expected
    # ~1e5 draws: the std is estimated within ~0.5%; the wrong design is off by ≥ 41%
    assert abs(ratios["once"] - 1) < 0.03, ratios
    assert abs(ratios["every_rank"] - 1) > 0.3, ratios
    exact = json.loads((tmp_path / "exact.json").read_text())
    assert exact["dp_max_abs_diff"] < 1e-6 * exact["dp_max_abs_update"], exact
    assert exact["plain_max_abs_diff"] < 1e-6 * exact["plain_max_abs_update"], exact
    assert exact["dp_max_abs_update"] > 0 and exact["plain_max_abs_update"] > 0


def test_unsupported_strategy_is_one_line_and_leaves_no_run(tracking_uri, capsys, reports_csv):
    from radpriv.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", *TINY, f"data.path={reports_csv[0]}", "trainer.strategy=ddp_spawn", "trainer.devices=2"])
    assert exit_info.value.code == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("radpriv: error")]
    assert len(err) == 1 and "trainer.strategy" in err[0]
    assert not runs_in(Path(tracking_uri.removeprefix("sqlite:///")).parent)


# -- the probe: run as `python -m tests.test_ddp probe <dir>` (both ranks run it) ----------------
def _probe(out: Path) -> None:
    import lightning as L
    from opacus.optimizers import DistributedDPOptimizer, DPOptimizer

    from radpriv.config import compose
    from radpriv.privacy.callback import DPCallback
    from radpriv.train import build, make_trainer
    from tests.synthetic import synthetic_table

    table = synthetic_table(48)
    table.labels[:] = -1.0  # every label masked: every per-report gradient is exactly zero
    cfg = compose(["model=tiny_bert", "data.max_length=32", "privacy.epsilon=1", "privacy.max_grad_norm=1",
                   "privacy.expected_batch_size=8", "privacy.max_physical_batch_size=4",
                   "finetune.optimizer=sgd", "finetune.lr=1", "finetune.schedule=constant",
                   "finetune.warmup_ratio=0", "finetune.head_dropout=0", "trainer.max_epochs=10",
                   "trainer.check_val_every_n_epoch=1000", "trainer.progress_bar=false",
                   "trainer.accelerator=cpu", "tracking.checkpoint_dir=null", *DDP2])

    class Recorder(L.Callback):
        """Each applied update (parameters before − after) of the trainable parameters."""

        def __init__(self):
            self.deltas = []

        def _flat(self, pl_module):
            return torch.cat([p.detach().flatten() for p in pl_module.net.parameters() if p.requires_grad])

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self._before = self._flat(pl_module)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.deltas.append(self._before - self._flat(pl_module))

    for design in ("once", "every_rank"):
        original = DistributedDPOptimizer.add_noise
        if design == "every_rank":  # the wrong design: every rank adds its own (independent) noise
            def add_noise_on_every_rank(self):
                if self.generator is None:
                    self.generator = torch.Generator().manual_seed(1000 + self.rank)
                DPOptimizer.add_noise(self)

            DistributedDPOptimizer.add_noise = add_noise_on_every_rank
        try:
            built = build(cfg, table)
            dm, module, plan = built.dm, built.module, built.plan
            dm.setup("fit")
            recorder = Recorder()
            trainer = make_trainer(cfg, False, [DPCallback(plan), recorder], None)
            trainer.fit(module, datamodule=dm)
        finally:
            DistributedDPOptimizer.add_noise = original
        torch.save(torch.stack(recorder.deltas), out / f"{design}_rank{trainer.global_rank}.pt")
        if trainer.is_global_zero:
            (out / "plan.json").write_text(json.dumps(plan.__dict__))
    _exactness(out, trainer.global_rank, trainer.world_size)


def _exactness(out: Path, rank: int, world: int) -> None:
    """σ = 0: one distributed step over the ranks' shards = one single-process step over their union."""
    from opacus.grad_sample import GradSampleHooks

    from radpriv.data.datamodule import LogicalBatch, pad_chunk
    from radpriv.data.tokens import tokenize_texts
    from radpriv.model.classifier import build_classifier
    from radpriv.model.encoder import load_encoder, resolve_spec
    from radpriv.model.module import PlainStep, per_sample_loss
    from radpriv.privacy.callback import PrivacyPlan
    from radpriv.privacy.distributed import DistributedPlainStep, distributed_dp_optimizer
    from radpriv.privacy.dp_step import DPStep, NoisyDPOptimizer
    from tests.synthetic import synthetic_table

    lora = LORA
    table = synthetic_table(12)
    b, clip = 6, 0.05  # a small C: clipping is active

    def net_and_items():
        encoder, tok = load_encoder(resolve_spec("tiny_bert"), seed=0)
        torch.manual_seed(0)
        net = build_classifier(encoder, table.num_labels, lora)
        for n, p in net.named_parameters():
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.2, generator=torch.Generator().manual_seed(1))
        for m in net.modules():  # no dropout: the comparison is exact (train mode: Opacus' hooks record)
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        net.train()
        ids = tokenize_texts(table.texts, tok, 32)
        return net, [(i, ids[i], table.labels[i]) for i in range(9)]

    def step(items, make_optimizer, runner, hooks: bool):
        net, _ = net_and_items()
        params = [p for p in net.parameters() if p.requires_grad]
        handle = GradSampleHooks(net, batch_first=True, loss_reduction="sum") if hooks else None
        opt = make_optimizer(torch.optim.SGD(params, lr=1.0))

        class Shim:
            chunk_losses = staticmethod(lambda c: per_sample_loss(net(c["input_ids"], c["attention_mask"]),
                                                                  c["labels"]))
            manual_backward = staticmethod(lambda loss: loss.backward())

        class Wrapped:  # what the step runners need of Lightning's optimizer wrapper
            optimizer = opt
            param_groups = opt.param_groups
            step = staticmethod(opt.step)
            zero_grad = staticmethod(opt.zero_grad)

        before = torch.cat([p.detach().flatten().clone() for p in params])
        chunks = [pad_chunk(items[s:s + 2], 0) for s in range(0, len(items), 2)]
        runner(Shim, Wrapped, LogicalBatch(chunks=chunks, size=len(items)))
        if handle is not None:
            handle.cleanup()
        return before - torch.cat([p.detach().flatten() for p in params])

    _, items = net_and_items()
    shard = items[rank::world]
    plan = PrivacyPlan(target_epsilon=float("inf"), delta=1e-5, noise_multiplier=0.0, max_grad_norm=clip,
                       sample_rate=0.5, expected_batch_size=b, planned_steps=1, accountant="prv")
    dp = step(shard, lambda o: distributed_dp_optimizer(o, plan), DPStep(), hooks=True)
    plain = step(shard, lambda o: o, DistributedPlainStep(), hooks=False)
    if rank == 0:
        dp_ref = step(items, lambda o: NoisyDPOptimizer(o, randomness=PrivateRandomness(), noise_multiplier=0.0,
                                                        max_grad_norm=clip, expected_batch_size=b), DPStep(),
                      hooks=True)
        plain_ref = step(items, lambda o: o, PlainStep(), hooks=False)
        (out / "exact.json").write_text(json.dumps({
            "dp_max_abs_diff": float((dp - dp_ref).abs().max()),
            "dp_max_abs_update": float(dp_ref.abs().max()),
            "plain_max_abs_diff": float((plain - plain_ref).abs().max()),
            "plain_max_abs_update": float(plain_ref.abs().max())}))


if __name__ == "__main__" and sys.argv[1:2] == ["probe"]:
    _probe(Path(sys.argv[2]))
