"""`radpriv audit [training overrides] audit.canaries=500`: train with canaries, then audit.

One training run, exactly as `radpriv train` would make it from the same overrides, except that
the m canaries whose coin came up heads are appended to its training split (so N, q and δ are
those of the audited run). The audit's numbers are logged to that same run (metrics `audit/*`,
artifact `audit.json`: counts and bounds only — never a canary text or a per-canary score).

If the ε lower bound exceeds the ε the run claims, the DP implementation is broken: the command
says so and exits with status 2.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from radpriv.audit.canaries import make_canaries, with_canaries
from radpriv.audit.mia import loss_threshold_auc, per_report_loss
from radpriv.audit.one_run_bound import epsilon_lower_bound, guesses
from radpriv.data.sources import load_table
from radpriv.errors import ConfigError, PrivacyError
from radpriv.model.bundle import load_bundle, predict_proba
from radpriv.model.encoder import load_encoder, resolve_spec
from radpriv.model.warm_start import fetch_bundle
from radpriv.privacy import accounting

log = logging.getLogger(__name__)


def _guess_counts(cfg_audit, m: int) -> tuple[int, int]:
    default = max(1, m // 10)
    k_plus = default if cfg_audit.get("k_plus") is None else int(cfg_audit.k_plus)
    k_minus = default if cfg_audit.get("k_minus") is None else int(cfg_audit.k_minus)
    return k_plus, k_minus


def audit(cfg: DictConfig) -> dict:
    from radpriv.train import train
    from radpriv.tracking.mlflow_run import client as tracking_client

    a = cfg.audit
    m = int(a.canaries)
    if m < 2:
        raise ConfigError(f"audit.canaries={m}: need at least 2 canaries")
    k_plus, k_minus = _guess_counts(a, m)
    if k_plus + k_minus > m:
        raise ConfigError(f"audit.k_plus + audit.k_minus = {k_plus + k_minus} exceeds audit.canaries={m}")
    seed = int(cfg.seed)
    table = load_table(cfg.data, seed)
    _, tokenizer = load_encoder(resolve_spec(cfg.model.source), seed=seed)
    canaries = make_canaries(m, table.label_names, tokenizer, int(a.seed), int(a.words_per_canary))
    audited = with_canaries(table, canaries)
    log.info("audit: %d canaries, %d of them in training (N_train %d → %d)", m, int(canaries.member.sum()),
             table.split.count("train"), audited.split.count("train"))

    cfg = cfg.copy()
    OmegaConf.update(cfg, "tracking.tags", {**(cfg.tracking.get("tags") or {}), "radpriv.audit": "true"},
                     force_add=True)
    summary = train(cfg, table=audited)
    run_id = summary["run_id"]

    with tempfile.TemporaryDirectory() as tmp:
        model = load_bundle(fetch_bundle(run_id, cfg.tracking.get("uri"), Path(tmp)))
    batch = int(cfg.trainer.eval_batch_size)
    scores = -per_report_loss(predict_proba(model, canaries.texts, batch), canaries.labels)
    r, v = guesses(scores, canaries.member, k_plus, k_minus)
    claimed = summary["metrics"].get("privacy/epsilon")
    n_train = audited.split.count("train")
    if a.get("delta") is not None:
        delta = float(a.delta)
    else:
        delta = float(summary["metrics"].get("privacy/delta") or accounting.default_delta(n_train))
    confidence = float(a.confidence)
    lower = epsilon_lower_bound(m, r, v, delta, confidence)

    log.info("audit: membership inference on real training vs test reports (loss threshold)")
    train_split, test_split = table.subset("train"), table.subset("test")
    if len(test_split) == 0:
        raise ConfigError("audit: the dataset has no test split to compare training reports with")
    auc = loss_threshold_auc(per_report_loss(predict_proba(model, train_split.texts, batch), train_split.labels),
                             per_report_loss(predict_proba(model, test_split.texts, batch), test_split.labels))

    result = {
        "canaries": m, "canaries_in_training": int(canaries.member.sum()), "k_plus": k_plus,
        "k_minus": k_minus, "guesses": r, "correct": v, "confidence": confidence, "delta": delta,
        "epsilon_lower_bound": lower, "claimed_epsilon": claimed, "mia_auc": auc,
        "mia_members": len(train_split), "mia_nonmembers": len(test_split),
        "method": "Steinke, Nasr & Jagielski (NeurIPS 2023) one-run bound; loss-threshold MIA AUC",
    }
    client = tracking_client(cfg)
    metrics = {"audit/epsilon_lower_bound": lower if math.isfinite(lower) else 1e9, "audit/mia_auc": auc,
               "audit/canaries": m, "audit/guesses": r, "audit/correct_guesses": v,
               "audit/claimed_epsilon": claimed if claimed is not None else float("inf")}
    for key, value in metrics.items():
        if math.isfinite(value):
            client.log_metric(run_id, key, float(value))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "audit.json"
        path.write_text(json.dumps(result, indent=2))
        client.log_artifact(run_id, str(path))
    log.info("audit: ε lower bound %.3g at %.0f%% confidence (%d/%d guesses correct); claimed ε %s; "
             "MIA AUC %.3f", lower, 100 * confidence, v, r,
             "none (non-private)" if claimed is None else f"{claimed:.3g}", auc)
    if claimed is not None and lower > claimed * (1 + 1e-9):
        raise PrivacyError(
            f"PRIVACY BUG: the audit's ε lower bound {lower:.4g} ({100 * confidence:.0f}% confidence) "
            f"exceeds the claimed ε {claimed:.4g} of run {run_id}; the DP implementation leaks more "
            "than its accountant says")
    return {"run_id": run_id, "audit": result, "metrics": summary["metrics"]}
