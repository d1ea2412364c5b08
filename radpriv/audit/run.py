"""`radpriv audit privacy.epsilon=<ε> [training overrides] [audit.*]`: train with canaries, audit.

Design: the audited training run *is* the audit run. One training run, exactly as `radpriv
train` makes it from the same overrides (the same params, no `audit.*` among them), except that
the canaries whose coin came up heads are appended to its training split — so N, the sampling
rate q, σ and δ are those of the audited run, and its `audit/*` metrics sit in the same MLflow
run as the `privacy/epsilon` they test (tag `radpriv.audit=true`). A separate parent run would
only add a second place to look, so unlike tune, sweep and pate the audit does not use
radpriv/tracking/parent_run.py: it logs into the audited run, by its id.

Scoring uses the model as *logged* (downloaded from MLflow and loaded with
radpriv.model.bundle), not the in-process module: the audit then tests exactly what is released.

The canaries are units of the audited run's privacy unit, resolved exactly as training resolves
it (radpriv.data.patients.privacy_unit): one report each at the report unit; at the patient unit a
patient of `audit.reports_per_canary` reports with one coin, so the audit tests the guarantee
per patient that the run claims (radpriv/audit/canaries.py).

`audit.mode=white_box` audits the DP-SGD step instead, with gradient canaries and no training on
reports (radpriv/audit/white_box.py); it logs nothing to MLflow.

What reaches MLflow, stdout and stderr: counts, the bound, AUCs and settings — never a canary
text, a per-canary score or a per-canary membership bit (nor audit.seed, from which canaries
could be regenerated: it stays on the user's command line).

If the ε lower bound exceeds the ε the run claims, the DP implementation leaks more than its
accountant says: the command prints the summary, one loud line on stderr, and exits with
status 3 (2 is reserved for input mistakes).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict

from radpriv.audit.canaries import make_canaries, with_canaries
from radpriv.audit.mia import loss_threshold_auc, model_losses
from radpriv.audit.one_run_bound import epsilon_lower_bound, guesses
from radpriv.data.patients import privacy_unit, resolve_unit, training_units
from radpriv.errors import ConfigError, PrivacyError

log = logging.getLogger(__name__)

EXIT_PRIVACY_BUG = 3
METHOD = ("one-run ε lower bound of Steinke, Nasr & Jagielski (NeurIPS 2023), canary score = "
          "−BCE of its own labels (at the patient unit: of the text its reports share); "
          "loss-threshold MIA AUC (Yeom et al. 2018) on train vs test reports")


@dataclass(frozen=True)
class Settings:
    """The audit's knobs, all checked before any data is read or model trained."""
    canaries: int
    k_plus: int
    k_minus: int
    confidence: float
    delta: float | None
    words_per_canary: int
    seed: int
    reports_per_canary: int | None  # None: by the privacy unit (reports_per_canary())
    mode: str = "black_box"  # black_box: the trained model's losses; white_box: gradient canaries


def settings(cfg: DictConfig) -> Settings:
    a = cfg.audit
    m = int(a.canaries)
    if m < 1:
        raise ConfigError(f"audit.canaries={m}: need at least 1 canary (the paper's audits use ≥ 1000)")
    default = m // 10  # fixed before any score is seen: "in" for the top 10%, "out" for the bottom 10%
    k_plus = max(1, default) if a.k_plus is None else int(a.k_plus)
    k_minus = default if a.k_minus is None else int(a.k_minus)
    if k_plus < 0 or k_minus < 0 or k_plus + k_minus < 1:
        raise ConfigError(f"audit.k_plus={k_plus}, audit.k_minus={k_minus}: need ≥ 0 each and ≥ 1 guess")
    if k_plus + k_minus > m:
        raise ConfigError(f"audit.k_plus + audit.k_minus = {k_plus + k_minus} exceeds audit.canaries={m}")
    confidence = float(a.confidence)
    if not 0 < confidence < 1:
        raise ConfigError(f"audit.confidence={confidence}: must be in (0, 1), e.g. 0.95")
    delta = None if a.delta is None else float(a.delta)
    if delta is not None and not 0 <= delta < 1:
        raise ConfigError(f"audit.delta={delta}: must be in [0, 1)")
    if int(a.words_per_canary) < 1:
        raise ConfigError(f"audit.words_per_canary={a.words_per_canary}: need at least 1 word")
    per = a.reports_per_canary
    if per is not None and (isinstance(per, bool) or not isinstance(per, int) or per < 1):
        raise ConfigError(f"audit.reports_per_canary={per!r}: must be a whole number ≥ 1, or null")
    if not cfg.tracking.log_model:
        raise ConfigError("tracking.log_model=false: the audit scores the logged model; drop that override")
    mode = str(a.mode)
    if mode not in ("black_box", "white_box"):
        raise ConfigError(f"audit.mode={mode!r}: expected black_box or white_box")
    return Settings(m, k_plus, k_minus, confidence, delta, int(a.words_per_canary), int(a.seed), per, mode)


def reports_per_canary(s: Settings, unit, cap: int) -> int:
    """Reports of one canary: 1 at the report unit; at the patient unit audit.reports_per_canary,
    never above the run's reports-per-patient `cap`. null: `cap` itself — the largest patient
    the run admits, on whom clipping reports one by one would leak the most."""
    if unit.name == "report":
        # several reports in or out together would be a group of units: a test of group privacy
        # (about k·ε), which a correct report-level run fails
        if s.reports_per_canary not in (None, 1):
            raise ConfigError(f"audit.reports_per_canary={s.reports_per_canary}: the privacy unit is the "
                              "report, so each canary is one report; leave it null")
        return 1
    if s.reports_per_canary is None:
        return cap
    if s.reports_per_canary > cap:
        # a drawn patient brings a random `cap` of its reports: the rest would dilute the score
        raise ConfigError(f"audit.reports_per_canary={s.reports_per_canary} exceeds "
                          f"the run's reports per patient, {cap} (privacy.max_reports_per_patient)")
    return s.reports_per_canary


def require_claim(overrides: list[str]) -> None:
    """The audit tests a claim: the user must state it, not inherit the config's default ε."""
    keys = {ov.lstrip("+~").partition("=")[0] for ov in overrides}
    if not keys & {"privacy.epsilon", "privacy"}:
        raise ConfigError("radpriv audit: state the claimed ε to test, privacy.epsilon=<ε> "
                          "(or privacy.epsilon=null to audit a non-private run)")


def _audit_delta(s: Settings, cfg: DictConfig, private: bool, n_train: int) -> float:
    """δ of the null hypothesis. For a private run it is the run's own δ (or a larger one): a
    smaller δ would test a claim the run never made and could raise a false alarm. `n_train`
    counts training units (patients at the patient unit), as the run's default δ does."""
    from radpriv.privacy import accounting

    run_delta = (float(cfg.privacy.delta) if cfg.privacy.delta is not None
                 else accounting.default_delta(n_train))
    if s.delta is None:
        return run_delta
    if private and s.delta < run_delta:
        raise ConfigError(f"audit.delta={s.delta:g} is below the run's δ={run_delta:.3g}: a private run "
                          "claims nothing at a smaller δ; leave audit.delta=null")
    return s.delta


def audit(cfg: DictConfig) -> dict:
    """Train with canaries, score them and the real reports, log and return the summary."""
    from radpriv.data.sources import load_table
    from radpriv.model.bundle import load_bundle
    from radpriv.model.encoder import load_encoder, resolve_spec
    from radpriv.privacy import accounting
    from radpriv.tracking.model_ref import local_bundle
    from radpriv.train import train

    s = settings(cfg)
    private = accounting.resolve_epsilon(cfg.privacy.epsilon) is not None
    if s.mode == "white_box" and not private:
        raise ConfigError("audit.mode=white_box audits a DP-SGD claim: set privacy.epsilon")
    table = load_table(cfg.data, int(cfg.seed))
    if s.mode == "black_box" and "test" not in table.split:
        raise ConfigError("audit: the dataset has no test split to compare training reports with")
    unit, cap = privacy_unit(cfg.privacy, table)  # as training resolves them, from the same config and format
    per = reports_per_canary(s, unit, cap)  # checked before the encoder loads or anything trains
    _, tokenizer = load_encoder(resolve_spec(cfg.model.source), seed=int(cfg.seed))
    canaries = make_canaries(s.canaries, table.label_names, tokenizer, s.seed, s.words_per_canary,
                             reports_per_canary=per)
    if s.mode == "white_box":
        return _white_box(cfg, table, canaries, s)
    audited = with_canaries(table, canaries)
    if resolve_unit(cfg.privacy.unit, audited).name != unit.name:  # with_canaries keeps the format
        raise PrivacyError(f"audit: the canaries changed the privacy unit from {unit.name}")
    n_train = training_units(audited, unit)
    delta = _audit_delta(s, cfg, private, n_train)
    n_in = int(canaries.member.sum())
    log.info("audit: %d canaries (%s unit, %d report(s) each), %d of them in training (N_train %d → %d "
             "%ss); guesses fixed in advance: k+=%d, k−=%d", s.canaries, unit.name, per, n_in,
             training_units(table, unit), n_train, unit.name, s.k_plus, s.k_minus)

    train_cfg = cfg.copy()
    with open_dict(train_cfg):
        del train_cfg["audit"]  # the training run's params are those `radpriv train` would log
    OmegaConf.update(train_cfg, "tracking.tags", {**(train_cfg.tracking.tags or {}),
                                                  "radpriv.audit": "true"}, force_add=True)
    summary = train(train_cfg, table=audited)
    run_id = summary["run_id"]
    # canaries are added to or left out of training: the experiment tests add/remove adjacency,
    # so the claim under test is the run's add/remove ε (never above its replace-one guarantee:
    # the stricter test)
    claimed = summary["metrics"].get("privacy/epsilon_add_remove", summary["metrics"].get("privacy/epsilon"))
    if private and claimed is None:
        raise PrivacyError(f"audit: run {run_id} trained privately but reported no privacy/epsilon")
    if private and s.delta is None:  # the δ the run itself reports is the claim under test
        delta = float(summary["metrics"].get("privacy/delta", delta))

    with tempfile.TemporaryDirectory() as tmp:
        model = load_bundle(local_bundle(run_id, cfg.tracking.uri, Path(tmp), f"audited run {run_id}").folder)
    batch = int(cfg.trainer.eval_batch_size)
    # one loss per canary: a canary patient's k reports are copies of one text with one label
    # vector, so the loss of that text is the loss of each of them
    scores = -model_losses(model, canaries.texts, canaries.labels, batch, "audit: scoring canaries")
    r, v = guesses(scores, canaries.member, s.k_plus, s.k_minus)
    lower = epsilon_lower_bound(s.canaries, r, v, delta, s.confidence)
    canary_auc = _canary_auc(scores, canaries.member)

    train_split, test_split = table.subset("train"), table.subset("test")
    auc = loss_threshold_auc(
        model_losses(model, train_split.texts, train_split.labels, batch, "audit: scoring training reports"),
        model_losses(model, test_split.texts, test_split.labels, batch, "audit: scoring test reports"))

    result = {
        "canaries": s.canaries, "canaries_in_training": n_in, "unit": unit.name, "reports_per_canary": per,
        "k_plus": s.k_plus, "k_minus": s.k_minus,
        "guesses": r, "correct_guesses": v, "confidence": s.confidence, "delta": delta,
        "epsilon_lower_bound": lower, "claimed_epsilon": claimed, "canary_auc": canary_auc,
        "mia_auc": auc, "mia_members": len(train_split), "mia_nonmembers": len(test_split),
        "method": METHOD,
    }
    result["verdict"] = ("non-private: nothing claimed" if claimed is None
                         else "PRIVACY BUG" if lower > claimed else "consistent with the claimed ε")
    _log(cfg, run_id, result)
    log.info("audit: ε lower bound %.3g at %.0f%% confidence (%d of %d guesses correct, δ=%.3g); "
             "claimed ε %s; MIA AUC %.3f (train vs test), canary AUC %s", lower, 100 * s.confidence,
             v, r, delta, "none (non-private)" if claimed is None else f"{claimed:.4g}", auc,
             "n/a" if canary_auc is None else f"{canary_auc:.3f}")
    return {"run_id": run_id, "audit": result, "metrics": summary["metrics"]}


def _white_box(cfg: DictConfig, table, canaries, s: Settings) -> dict:
    """The white-box audit (radpriv/audit/white_box.py): nothing trains on report text and
    nothing reaches MLflow; the summary goes to stdout."""
    from radpriv.audit.white_box import METHOD as WHITE_BOX_METHOD
    from radpriv.audit.white_box import noisy_update_sums
    from radpriv.privacy import accounting

    scores, plan, n_units = noisy_update_sums(cfg, table, canaries)
    # canaries are added or left out: the claim tested is the add/remove ε of the run's own
    # (σ, q, steps) at its own δ, as in the black-box audit
    claimed = accounting.epsilon_spent(plan.accountant, (plan.noise_multiplier, plan.sample_rate,
                                                         plan.planned_steps), plan.delta, "add_remove")
    delta = _audit_delta(s, cfg, True, n_units)
    r, v = guesses(scores, canaries.member, s.k_plus, s.k_minus)
    lower = epsilon_lower_bound(s.canaries, r, v, delta, s.confidence)
    canary_auc = _canary_auc(scores, canaries.member)
    result = {
        "mode": "white_box", "canaries": s.canaries, "canaries_in_training": int(canaries.member.sum()),
        "unit": plan.unit, "reports_per_canary": canaries.reports_per_canary, "k_plus": s.k_plus,
        "k_minus": s.k_minus, "guesses": r, "correct_guesses": v, "confidence": s.confidence, "delta": delta,
        "epsilon_lower_bound": lower, "claimed_epsilon": claimed, "claimed_epsilon_replace_one": plan.target_epsilon,
        "noise_multiplier": plan.noise_multiplier, "sample_rate": plan.sample_rate, "steps": plan.planned_steps,
        "canary_auc": canary_auc, "method": WHITE_BOX_METHOD,
        "verdict": "PRIVACY BUG" if lower > claimed else "consistent with the claimed ε",
    }
    log.info("audit (white box): ε lower bound %.3g at %.0f%% confidence (%d of %d guesses correct, δ=%.3g); "
             "claimed ε %.4g (add/remove; replace-one %.4g); canary AUC %s", lower, 100 * s.confidence, v, r,
             delta, claimed, plan.target_epsilon, "n/a" if canary_auc is None else f"{canary_auc:.3f}")
    return {"run_id": None, "audit": result}


def _canary_auc(scores: np.ndarray, member: np.ndarray) -> float | None:
    """AUC of the canary scores, members against the others (None: all in or all out)."""
    return loss_threshold_auc(-scores[member], -scores[~member]) if 0 < member.sum() < len(member) else None


def _log(cfg: DictConfig, run_id: str, result: dict) -> None:
    """Metrics `audit/*`, a verdict tag and `audit.json` (aggregates only) on the training run."""
    from radpriv.tracking.mlflow_run import client as tracking_client

    client = tracking_client(cfg)
    metrics = {"audit/epsilon_lower_bound": result["epsilon_lower_bound"], "audit/mia_auc": result["mia_auc"],
               "audit/canary_auc": result["canary_auc"], "audit/canaries": result["canaries"],
               "audit/canaries_in_training": result["canaries_in_training"],
               "audit/reports_per_canary": result["reports_per_canary"],
               "audit/guesses": result["guesses"], "audit/correct_guesses": result["correct_guesses"],
               "audit/k_plus": result["k_plus"], "audit/k_minus": result["k_minus"],
               "audit/delta": result["delta"], "audit/confidence": result["confidence"]}
    if result["claimed_epsilon"] is not None:
        metrics["audit/claimed_epsilon"] = result["claimed_epsilon"]
    for key, value in metrics.items():
        if value is not None and math.isfinite(float(value)):
            client.log_metric(run_id, key, float(value))
    client.set_tag(run_id, "radpriv.audit.verdict", result["verdict"])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "audit.json"
        path.write_text(json.dumps(result, indent=2, default=float))
        client.log_artifact(run_id, str(path))


def privacy_bug(summary: dict) -> str | None:
    """The loud one-line message when the audit refutes the claimed ε, else None.

    A correct DP implementation triggers it with probability at most 1 − confidence (5%).
    """
    a = summary["audit"]
    claimed, lower = a["claimed_epsilon"], a["epsilon_lower_bound"]
    if claimed is None or not lower > claimed:
        return None
    what = f"run {summary['run_id']}" if summary.get("run_id") else "the white-box DP-SGD step"
    return (f"PRIVACY BUG: {what}: the audited ε lower bound {lower:.4g} "
            f"({100 * a['confidence']:.0f}% confidence, {a['correct_guesses']}/{a['guesses']} canary guesses "
            f"correct) exceeds the claimed ε {claimed:.4g}: the DP implementation leaks more than its "
            "accountant says")


def audit_command(overrides: list[str]) -> int:
    """The `radpriv audit` command: print the summary JSON; exit 3 on a privacy bug."""
    from radpriv.config import compose

    require_claim(overrides)
    cfg = compose(["+audit=default", *overrides])
    settings(cfg)  # every audit setting checked before any data is read
    summary = audit(cfg)
    print(json.dumps(summary, default=float))
    message = privacy_bug(summary)
    if message:
        print(f"radpriv: {message}", file=sys.stderr)
        return EXIT_PRIVACY_BUG
    return 0

