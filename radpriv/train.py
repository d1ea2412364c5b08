"""`radpriv train`: data → model → (DP) Lightning fit → thresholds → test → MLflow.

Everything that can fail on user input (data, model name, privacy settings) is checked
before an MLflow run is opened, so a rejected run leaves nothing half-written.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from radpriv import process_memory
from radpriv.config import resolve_auto_thresholds
from radpriv.data.datamodule import ReportDataModule
from radpriv.data.patients import privacy_unit
from radpriv.data.sources import load_table
from radpriv.data.table import ReportTable
from radpriv.errors import ConfigError
from radpriv.model import precision, prefix_cache
from radpriv.model.classifier import build_classifier
from radpriv.model.encoder import EncoderSpec, load_encoder, resolve_spec
from radpriv.model.head_init import HEAD_INITS, init_head_from_label_names
from radpriv.model.interpolation import WarmSource, check_lambdas
from radpriv.model.module import ReportClassifierModule
from radpriv.model.public_start import PUBLIC, PublicCorpusData
from radpriv.model.warm_start import apply_warm_start
from radpriv.privacy import distributed
from radpriv.privacy.callback import DPCallback, PrivacyPlan
from radpriv.privacy.plan import (
    check_batch_sizes,
    choose_dp_thresholds,
    is_private,
    logical_batch_size,
    plan_dp_thresholds,
    plan_privacy,
    sampling_unit,
    secure_sampling,
    steps_per_epoch,
)
from radpriv.privacy.step_journal import StepJournal
from radpriv.tracking.model_ref import local_bundle
from radpriv.tracking.release import private_folder, train_digest
from radpriv.tracking.resume import (
    CHECKPOINT,
    COMPLETE_TAG,
    RUN_KEY_TAG,
    EpochEndCheckpoint,
    TrainingClock,
    find_resume_point_of,
    run_keys,
)

log = logging.getLogger(__name__)


def configure_threads(n: int | None) -> None:
    if n:
        torch.set_num_threads(int(n))


THRESHOLDS = ("validation", "fixed", "dp", "public")


def resolve_thresholds(cfg: DictConfig) -> str:
    """`trainer.thresholds`, checked; `auto` (normally resolved at compose time) resolved here too,
    for a config built without `compose`."""
    with open_dict(cfg):
        resolve_auto_thresholds(cfg)
    value = str(cfg.trainer.thresholds)
    if value not in THRESHOLDS:
        raise ConfigError(f"trainer.thresholds={value!r}: expected one of {', '.join(THRESHOLDS)} or auto")
    return value


@dataclasses.dataclass(frozen=True)
class PublicModel:
    """The public model a `finetune.init_from=public` config starts from: its training config
    (public_start.public_run_cfg), the run keys a finished run of it carries, and its corpus."""

    cfg: DictConfig
    keys: list[str]
    corpus: PublicCorpusData

    @property
    def name(self) -> str:
        return str(self.cfg.tracking.register)


def public_model(cfg: DictConfig, corpus: PublicCorpusData) -> PublicModel:
    from radpriv.model.public_start import public_run_cfg

    pub = public_run_cfg(cfg, corpus)
    return PublicModel(pub, run_keys(pub, corpus.table.fingerprint(), private_folder(pub)), corpus)


def find_public_model(model: PublicModel) -> str | None:
    """The run id of a finished run of the public model, else None."""
    from radpriv.model.public_start import EXPERIMENT
    from radpriv.tracking import mlflow_run
    from radpriv.tracking.resume import find_finished

    client = mlflow_run.client(model.cfg)
    # its own experiment, then where a plain `radpriv train` of the same config would have gone;
    # looked up on every call: a worker waiting for another's public model sees them appear
    exps = [client.get_experiment_by_name(n) for n in (EXPERIMENT, f"radpriv-{model.corpus.data_cfg.name}")]
    ids = [e.experiment_id for e in exps if e is not None]
    found = find_finished(client, ids, model.keys) if ids else None
    return None if found is None else found.info.run_id


def train_public_model(cfg: DictConfig, model: PublicModel) -> str:
    """Train the public model now (non-private, on public reports only); its run id."""
    if str(cfg.trainer.strategy) != "auto":
        raise ConfigError(f"finetune.init_from=public: no public model {model.name} for this "
                          "config yet, and it is not trained inside a DDP run: run the same command once "
                          "with trainer.strategy=auto (it trains and registers the public model), then again")
    table = model.corpus.table
    log.info("public model: training %s on %s (%d public reports, non-private; once)",
             model.name, table.name, sum(s == "train" for s in table.split))
    return train(model.cfg, table=table)["run_id"]


def find_or_train_public_model(cfg: DictConfig, corpus: PublicCorpusData) -> str:
    """The run id of the public model for this config: a finished one with the same run key, else
    one trained now. A sweep with several workers obtains it under a claim before its warm cells
    train (radpriv/sweep/run.py), so that there this finds it."""
    model = public_model(cfg, corpus)
    found = find_public_model(model)
    if found is not None:
        log.info("public model: reusing run %s (%s, same config and public data)", found, model.name)
        return found
    return train_public_model(cfg, model)


def use_public_corpus(cfg: DictConfig, table: ReportTable, thresholds: str):
    """`finetune.init_from=public` and `trainer.thresholds=public`: read the public corpus, refuse an
    overlap with the private training reports, find or train the public model, and take the public
    validation split. Returns (table, public record or None, public model run id or None)."""
    from_public = str(cfg.finetune.init_from) == PUBLIC
    if not from_public and thresholds != "public":
        return table, None, None
    from radpriv.data.overlap import check_no_overlap
    from radpriv.model.public_start import load_public_corpus, with_public_validation

    corpus = load_public_corpus(cfg, table)
    check = check_no_overlap(table, corpus.table, same_dataset=corpus.same_dataset)
    ref = find_or_train_public_model(cfg, corpus) if from_public else None
    if thresholds == "public":
        table = with_public_validation(table, corpus)
    return table, corpus.record(check), ref


def freeze_below_top_layers(net, top: int) -> None:
    """Freeze every trainable encoder weight below the top `top` layers that have one."""
    from radpriv.model.prefix_cache import _layer_index

    def layer(name: str) -> int:
        return _layer_index(name.removeprefix("base_model.model."))

    trainable = [(n, p) for n, p in net.encoder.named_parameters() if p.requires_grad]
    layers = sorted({layer(n) for n, _ in trainable} - {1 << 30})
    if top < 1 or not layers:
        raise ConfigError(f"finetune.warm.top_layers={top}: must be ≥ 1, with trainable encoder layers")
    for n, p in trainable:
        if layer(n) not in layers[-top:]:
            p.requires_grad_(False)


def adapt_from_warm_start(cfg: DictConfig, net) -> WarmSource | None:
    """`finetune.warm`: what DP-SGD trains from the warm start (trainable=all|head), and the
    starting weights to interpolate against afterwards (interpolate=true)."""
    warm_cfg = cfg.finetune.warm
    trainable = str(warm_cfg.trainable).strip().lower()  # as the schema's choices
    if trainable not in ("all", "head"):
        raise ConfigError(f"finetune.warm.trainable={trainable!r}: expected all (what finetune.mode trains) or head")
    if trainable == "head":  # fewer noisy coordinates: the public encoder (and adapter) frozen
        for p in net.encoder.parameters():
            p.requires_grad_(False)
    top = warm_cfg.top_layers
    if top is not None and trainable == "all":  # only the adapters of the top `top` layers train
        freeze_below_top_layers(net, int(top))
    if not warm_cfg.interpolate:
        return None
    if cfg.trainer.thresholds == "dp":
        log.info("warm start: not interpolating (λ is chosen on the validation split, which "
                 "trainer.thresholds=dp keeps for its DP release; trainer.thresholds=public allows it)")
        return None
    check_lambdas(warm_cfg.lambdas)
    return WarmSource(net)


@dataclasses.dataclass(frozen=True)
class Built:
    """What `build` makes of a config: the report table (after any public validation split), the
    encoder spec, its tokenizer, the DataModule (batch sizes as the plan decided), the Lightning
    module, and the privacy plan (None: a non-private run)."""

    table: ReportTable
    spec: EncoderSpec
    tokenizer: object
    dm: ReportDataModule
    module: ReportClassifierModule
    plan: PrivacyPlan | None


def build(cfg: DictConfig, table: ReportTable | None = None) -> Built:
    """Data, model and privacy plan: every input check happens here, before MLflow.

    `table`: an already-built report table (the audit adds canaries to one); None loads cfg.data.
    """
    seed = int(cfg.seed)
    L.seed_everything(seed, workers=True, verbose=False)
    if table is None:
        table = load_table(cfg.data, seed)
    thresholds = resolve_thresholds(cfg)
    table, public, public_ref = use_public_corpus(cfg, table, thresholds)
    # the same start whether or not the public model was trained now
    L.seed_everything(seed, workers=True, verbose=False)
    spec = resolve_spec(cfg.model.source)
    encoder, tokenizer = load_encoder(spec, seed=seed)
    check_batch_sizes(cfg)
    max_epochs = int(cfg.trainer.max_epochs)
    if max_epochs < 1:
        raise ConfigError(f"trainer.max_epochs={max_epochs}: must be ≥ 1")
    unit, cap = privacy_unit(cfg.privacy, table)
    _, device_type = precision.of_trainer(cfg.trainer)
    num_workers, pin_memory = precision.loader_settings(cfg.trainer, device_type)
    dm = ReportDataModule(
        table, tokenizer, max_length=int(cfg.data.max_length),
        batch_size=int(cfg.privacy.expected_batch_size),
        physical_batch_size=int(cfg.privacy.max_physical_batch_size),
        eval_batch_size=int(cfg.trainer.eval_batch_size), seed=seed,
        padding=str(cfg.data.padding), poisson=is_private(cfg),
        unit=sampling_unit(cfg, unit),
        max_reports_per_patient=cap, num_workers=num_workers, pin_memory=pin_memory,
    )
    plan = plan_privacy(cfg, dm, max_epochs, unit)
    threshold_noise = plan_dp_thresholds(cfg, dm, plan)
    dm.secure_sampling = secure_sampling(plan)
    dm.batch_size = logical_batch_size(cfg, dm, plan)
    net = build_classifier(encoder, table.num_labels, cfg.finetune)
    head_init = str(cfg.finetune.head_init)
    if head_init not in HEAD_INITS:
        raise ConfigError(f"finetune.head_init={head_init!r}: expected one of {', '.join(HEAD_INITS)}")
    if head_init == "label_names":
        init_head_from_label_names(net, tokenizer, table.label_names, float(cfg.finetune.head_init_scale))
    warm, warm_source = None, None
    if cfg.finetune.init_from:
        train_split = dm.splits["train"]
        ref = public_ref or str(cfg.finetune.init_from)
        with tempfile.TemporaryDirectory() as tmp:
            source = local_bundle(ref, cfg.tracking.uri, Path(tmp), f"finetune.init_from={ref}")
            warm = apply_warm_start(net, source.folder, ref, label_names=table.label_names, spec=spec,
                                    mode=str(cfg.finetune.mode), dataset=table.name,
                                    train_fingerprints=(train_digest(private_folder(cfg), train_split),
                                                        train_split.fingerprint()),
                                    verified_disjoint=public_ref is not None)
        if public is not None and public_ref is not None:
            warm = dataclasses.replace(warm, public=public)
        warm_source = adapt_from_warm_start(cfg, net)
    elif public is not None:
        public = None  # thresholds=public alone: recorded by the statement, not as a warm start
    if cfg.finetune.lr is None:
        raise ConfigError("finetune.lr is null and no privacy.recipe_by_epsilon row sets it: give finetune.lr=<value>")
    total_steps = max_epochs * steps_per_epoch(cfg, dm)
    module = ReportClassifierModule(
        net, table.label_names, lr=float(cfg.finetune.lr),
        weight_decay=float(cfg.finetune.weight_decay), warmup_ratio=float(cfg.finetune.warmup_ratio),
        total_steps=total_steps, schedule=str(cfg.finetune.schedule),
        optimizer=str(cfg.finetune.optimizer),
        head_lr_multiplier=float(cfg.finetune.head_lr_multiplier),
        # per-batch training losses are exact functions of private batches: never released under DP
        log_train_loss=plan is None,
        log_validation_metrics=threshold_noise is None,
    )
    module.warm_start = warm  # recorded in privacy.json; never part of the privacy plan
    module.warm_source = warm_source  # finetune.warm.interpolate: the start to interpolate against
    module.threshold_noise = threshold_noise
    return Built(table=table, spec=spec, tokenizer=tokenizer, dm=dm, module=module, plan=plan)


def choose_interpolation(cfg: DictConfig, trainer: L.Trainer, module: ReportClassifierModule,
                         dm: ReportDataModule) -> None:
    """`finetune.warm.interpolate`: the λ of θ_start + λ(θ_DP − θ_start) chosen on the validation
    split (each λ with its own F1-optimal thresholds; a λ > 0 only when it beats the start with
    `finetune.warm.confidence`: interpolation.confident_lambda), then that model."""
    from radpriv.model.interpolation import confident_lambda
    from radpriv.model.metrics import DEFAULT_THRESHOLD, fit_thresholds

    source = module.warm_source
    source.keep_trained()
    lambdas = check_lambdas(cfg.finetune.warm.lambdas)
    preds, labels = {}, None
    for lam in lambdas:
        source.apply(lam)
        trainer.validate(module, datamodule=dm, verbose=False)
        _, probs, labels = module.collected("val")
        thr = (DEFAULT_THRESHOLD if cfg.trainer.thresholds == "fixed"
               else fit_thresholds(probs.numpy(), labels.numpy()))
        preds[lam] = (probs.numpy() >= thr).astype(np.int8)
    confidence = float(cfg.finetune.warm.confidence)
    chosen, scores, wins = confident_lambda(preds, labels.numpy(), confidence)
    source.apply(chosen)
    if chosen != lambdas[-1]:  # the last validation pass must be the chosen model's
        trainer.validate(module, datamodule=dm, verbose=False)
    log.info("warm start: λ = %g chosen on the validation split (weighted F1 %s)", chosen,
             ", ".join(f"{lam:g}: {v:.3f}" + (f" (beats λ=0 in {wins[lam]:.0%})" if lam in wins and lam else "")
                       for lam, v in scores.items()))
    module.interpolation = {"lambda": chosen, "chosen_on": f"{cfg.trainer.thresholds} validation split",
                            "confidence": confidence,
                            "val_f1_weighted": {f"{lam:g}": round(v, 4) for lam, v in scores.items()},
                            "beats_start": {f"{lam:g}": round(v, 3) for lam, v in wins.items()}}


def attach_prefix_cache(cfg: DictConfig, dm: ReportDataModule, module: ReportClassifierModule) -> None:
    """Compute the frozen bottom layers once for every report (see model/prefix_cache.py)."""
    k = prefix_cache.frozen_prefix_layers(module.net.encoder, cfg.finetune)
    if not k:
        return
    ids = {name: ds.input_ids for name, ds in dm.datasets.items()}
    dtype = precision.feature_dtype(cfg.finetune.prefix_cache_dtype)
    need = prefix_cache.estimated_bytes(ids, module.net.encoder.config.hidden_size, dtype)
    limit = float(cfg.finetune.prefix_cache_max_gb) * 2**30
    if need > limit:
        log.info("frozen-prefix cache: %.1f GB needed > finetune.prefix_cache_max_gb; not caching",
                 need / 2**30)
        return
    t0 = time.perf_counter()
    mode, device_type = precision.of_trainer(cfg.trainer)
    cache = prefix_cache.PrefixCache(k, dtype=dtype)
    # built where training runs (a GPU keeps its features on the device), in the run's precision
    device = torch.device("cuda" if device_type == "cuda" else "cpu")
    for name, ds in dm.datasets.items():
        cache.build(module.net, name, ds.input_ids, batch_size=int(cfg.trainer.eval_batch_size),
                    pad_id=dm.pad_id, progress=bool(cfg.trainer.progress_bar), device=device,
                    autocast=precision.autocast(mode, device_type))
    module.prefix_cache = cache
    log.info("frozen-prefix cache: layers 0-%d of every report computed once (%.0f MB, %.1f s)",
             k - 1, cache.nbytes() / 2**20, time.perf_counter() - t0)


def val_every(cfg: DictConfig) -> int:
    """Validation every n epochs; under trainer.thresholds=dp only once, after training."""
    if cfg.trainer.thresholds == "dp":
        return int(cfg.trainer.max_epochs) + 1
    return int(cfg.trainer.check_val_every_n_epoch)


def make_trainer(cfg: DictConfig, logger, callbacks, ckpt_dir: Path | None) -> L.Trainer:
    callbacks = list(callbacks)
    # DDP (trainer.strategy=ddp): radpriv/privacy/distributed.py, docs/SCALING.md
    strategy = distributed.make_strategy(cfg.trainer)
    ddp = not isinstance(strategy, str)
    if ckpt_dir is not None:
        callbacks.append(distributed.CollectiveEpochEndCheckpoint(ckpt_dir, CHECKPOINT) if ddp
                         else EpochEndCheckpoint(ckpt_dir))
    if ddp:
        callbacks.append(distributed.RankAgreement())
    mode, device_type = precision.of_trainer(cfg.trainer)
    log.info("precision: %s", precision.why(mode, device_type))
    trainer = L.Trainer(
        max_epochs=int(cfg.trainer.max_epochs), precision=mode,
        limit_train_batches=cfg.trainer.limit_train_batches or None,
        accelerator=cfg.trainer.accelerator, devices=cfg.trainer.devices,
        strategy=strategy, num_nodes=int(cfg.trainer.num_nodes),
        use_distributed_sampler=False,  # radpriv's samplers shard themselves (data/distributed_sampling.py)
        logger=logger, callbacks=callbacks,
        enable_checkpointing=False,  # radpriv's own epoch-end checkpoint (resume.py)
        enable_progress_bar=bool(cfg.trainer.progress_bar),
        enable_model_summary=False, num_sanity_val_steps=0,
        log_every_n_steps=int(cfg.trainer.log_every_n_steps),
        check_val_every_n_epoch=val_every(cfg),
        deterministic=False,
    )
    distributed.check_trainer(trainer)
    return trainer


def train(cfg: DictConfig, table: ReportTable | None = None, extra_callbacks: Sequence = ()) -> dict:
    """Train, test and log one model; returns the summary printed as the final JSON line.

    `table` replaces the configured data (see build); `extra_callbacks` are Lightning callbacks
    added to the trainer (e.g. a search's pruning callback).
    """
    from radpriv.tracking import mlflow_run, naming
    from radpriv.tracking.artifacts import log_training_run

    t0 = time.perf_counter()
    process_memory.reset_peak_resident()  # the run's own peak, not the sweep cells' before it
    configure_threads(cfg.trainer.num_threads)
    built = build(cfg, table)
    table, spec, tokenizer, dm, module, plan = (built.table, built.spec, built.tokenizer, built.dm,
                                                built.module, built.plan)
    t_build = time.perf_counter()
    dm.setup("fit")
    t_tokenize = time.perf_counter()
    attach_prefix_cache(cfg, dm, module)
    t_setup = time.perf_counter()

    resume = None
    keys = run_keys(cfg, table.fingerprint(), private_folder(cfg))
    key = keys[0]
    if cfg.tracking.checkpoint_dir:
        resume = find_resume_point_of(Path(cfg.tracking.checkpoint_dir), keys, mlflow_run.client(cfg))
        resume = distributed.agree_on_resume(cfg.trainer, resume)  # DDP: every rank as rank 0 chose
    logger = mlflow_run.make_logger(cfg, run_name=cfg.run_name or naming.run_name(cfg),
                                    run_id=resume.run_id if resume else None)
    try:
        clock = TrainingClock()
        journal = StepJournal(resume.journal) if resume is not None else None
        callbacks = [DPCallback(plan, journal)] if plan is not None else []
        callbacks += [clock, *extra_callbacks]
        trainer = make_trainer(cfg, logger, callbacks, resume.directory if resume else None)
        if trainer.is_global_zero:  # only rank 0 writes the run; `mlflow run`'s random name goes
            naming.name_run(logger.experiment, logger.run_id, cfg)
        if resume is not None and trainer.is_global_zero:
            resume.record(logger.run_id)
            if resume.checkpoint is not None:
                log.info("resuming run %s from %s", logger.run_id, resume.checkpoint)
                if resume.run_id != logger.run_id:  # `mlflow run` opened a new run for us
                    logger.experiment.set_tag(logger.run_id, "radpriv.resumed_from", resume.run_id)
        params = mlflow_run.flatten(OmegaConf.to_container(cfg, resolve=True))
        if plan is not None:  # the guarantee's relation and unit, beside the config that set it
            params.update({"privacy.adjacency": plan.adjacency, "privacy.unit_resolved": plan.unit})
        if resume is not None and resume.run_id == logger.run_id and trainer.is_global_zero:
            params = mlflow_run.join_resumed_run(logger, cfg, params)
        logger.log_hyperparams(params)
        # the batch actually used (non-private runs may use a smaller one, see build)
        logger.log_hyperparams({"train.logical_batch_size": dm.batch_size})
        # what was computed (config + data content): sweeps find finished cells by it
        logger.experiment.set_tag(logger.run_id, RUN_KEY_TAG, key)
        trainer.fit(module, datamodule=dm,
                    ckpt_path=str(resume.checkpoint) if resume and resume.checkpoint else None)
        t_fit = time.perf_counter()
        if trainer.interrupted:
            raise KeyboardInterrupt
        # thresholds from the trained model's validation pass (run again only if the last
        # epoch skipped validation), then the test split
        if module.warm_source is not None:  # ends with the chosen model's validation pass
            choose_interpolation(cfg, trainer, module, dm)
        if cfg.trainer.thresholds in ("validation", "dp", "public"):
            if module.warm_source is None and int(cfg.trainer.max_epochs) % val_every(cfg):
                trainer.validate(module, datamodule=dm, verbose=False)
            if cfg.trainer.thresholds == "dp":
                choose_dp_thresholds(module, callbacks[0])
            else:
                module.set_thresholds_from_validation()

        test_metrics = trainer.test(module, datamodule=dm, verbose=False)[0]
        t_eval = time.perf_counter()
        if not trainer.is_global_zero:  # DDP: only rank 0 writes the MLflow run; same summary
            return distributed.summary_from_rank_zero(trainer)
        dp = callbacks[0] if plan is not None else None
        summary = log_training_run(cfg, logger, module, dm, table, spec, tokenizer, plan, dp, test_metrics)
        t_log = time.perf_counter()
        # set-up = data and model loading + tokenisation (cached on disk after the first run)
        # + the frozen-prefix cache; the three parts are logged too
        timings = {"time/setup_s": t_setup - t0, "time/load_s": t_build - t0,
                   "time/tokenize_s": t_tokenize - t_build, "time/prefix_cache_s": t_setup - t_tokenize,
                   "time/fit_s": t_fit - t_setup,
                   "time/eval_s": t_eval - t_fit, "time/log_s": t_log - t_eval,
                   "time/total_s": t_log - t0,
                   # + the training earlier, killed invocations did up to their last checkpoint
                   "time/earlier_invocations_s": clock.earlier_s,
                   "time/cumulative_s": t_log - t0 + clock.earlier_s}
        peak = process_memory.peak_resident_bytes()
        if peak is not None:  # this invocation's peak, in this process (under DDP: rank 0's)
            timings[process_memory.PEAK_RESIDENT_METRIC] = peak / 2**30
        logger.log_metrics(timings)
        if cfg.tracking.register:
            from radpriv.tracking.registry import register_run_model

            summary["registered"] = register_run_model(cfg, logger.run_id)
        logger.experiment.set_tag(logger.run_id, COMPLETE_TAG, "true")
        logger.finalize("success")
        summary["metrics"].update({k: round(v, 2) for k, v in timings.items()})
        return distributed.summary_from_rank_zero(trainer, summary)
    except BaseException:
        mlflow_run.mark_failed(logger)
        raise
