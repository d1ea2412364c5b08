"""The privacy statement of a training run (privacy.json): every private record set it used, and how.

A run touches up to three sets of private reports: the training split (through DP-SGD), the
validation split (per-epoch `val/*` metrics, and the per-label thresholds stored with the
model) and the test split (the released `test/*` metrics). The statement names each, with its
guarantee or, loudly, "used without DP"; the headline ε is the training split's (ε, δ) under
the stated adjacency and unit, and the add/remove figure papers print is beside it, labelled
as such.
"""

from __future__ import annotations

RANDOMNESS = {
    False: "fresh OS entropy at every invocation (PyTorch generators seeded from the OS CSPRNG); never the seed",
    True: "ChaCha20 CSPRNG keyed from the OS (PyCA cryptography), Opacus' floating-point mitigation for the noise",
}
_RELATION_TEXT = {"replace_one": "replace-one (neighbouring training sets have the same number of {units} and "
                                 "differ in one {unit}; that number is published)",
                  "add_remove": "add/remove one {unit}"}
_UNIT_TEXT = {"report": ("report", "reports"),
              "patient": ("patient (with all their training reports)", "patients")}


def validation_use(thresholds: str, threshold_privacy: dict | None = None) -> dict:
    """How the run used its validation reports (`trainer.thresholds`)."""
    if thresholds == "dp" and threshold_privacy is not None:
        return {"use": "per-label decision thresholds, chosen by a DP mechanism "
                       f"({threshold_privacy.get('mechanism')}); no per-epoch val/* metric is published",
                "guarantee": (f"({threshold_privacy['epsilon']:.4g}, {threshold_privacy['delta']:.3g})-DP "
                              "for each validation report (replace-one)"),
                "dp": True}
    if thresholds == "public":
        return {"use": "none: the private validation reports were not used. Thresholds (and the warm start's "
                       "interpolation weight) were chosen, and the per-epoch val/* metrics computed, on the "
                       "public corpus' validation split",
                "guarantee": "not needed: nothing published depends on the private validation reports",
                "dp": True}
    if thresholds == "fixed":
        return {"use": "per-epoch val/* metrics only (thresholds fixed at 0.5: the model does not depend on "
                       "the validation reports)",
                "guarantee": "none: the val/* metrics are released without DP", "dp": False}
    return {"use": "per-label decision thresholds (F1-optimal, stored with the model) and per-epoch val/* metrics",
            "guarantee": "none: used without DP; the thresholds and val/* metrics can reveal validation reports",
            "dp": False}


TEST_USE = {"use": "the released test/* metrics (and the per-label F1 plot)",
            "guarantee": "none: computed without DP and released", "dp": False}


def privacy_statement(plan, dp, n_train: int, dataset: str, *, thresholds: str = "validation",
                      threshold_privacy: dict | None = None) -> dict:
    """privacy.json of a run (`plan`/`dp` None: non-private). Raises if the independent check fails.

    `n_train`: the training units N (patients at the patient unit, else reports).
    `threshold_privacy`: {"epsilon", "delta", "mechanism", "epsilon_total", …} when the
    thresholds were chosen by a DP mechanism (trainer.thresholds=dp).
    """
    record_sets = {"validation": validation_use(thresholds, threshold_privacy), "test": TEST_USE}
    if plan is None:
        record_sets["training"] = {"n": n_train, "guarantee": "none: trained without differential privacy",
                                   "dp": False}
        return {"private": False, "epsilon": None, "delta": None, "dataset": dataset, "n_train": n_train,
                "unit": "none", "guarantee": "none: trained without differential privacy",
                "record_sets": record_sets}
    eps = dp.epsilon()
    relation = plan.adjacency
    unit, units = _UNIT_TEXT[plan.unit]
    check = dp.accountant.cross_check()  # dp-accounting recomputation; raises on under-reporting
    eps_add_remove = check.get("privacy/epsilon_add_remove", eps if relation == "add_remove" else None)
    statement = (f"({eps:.4g}, {plan.delta:.3g})-DP for each {unit} of the training split under "
                 f"{_RELATION_TEXT[relation].format(unit=plan.unit, units=units)}, covering the LoRA/head "
                 "weights and every artifact derived from them")
    count = "n_train" if plan.unit == "report" else "n_train_patients"
    record_sets["training"] = {count: n_train, "unit": plan.unit, "guarantee": statement, "dp": True}
    report = {
        "private": True,
        "epsilon": eps,
        "delta": plan.delta,
        "adjacency": relation,
        "unit": plan.unit,
        "unit_why": plan.unit_why,
        "epsilon_add_remove": eps_add_remove,
        "epsilon_add_remove_note": ("the same steps under add/remove adjacency, as papers report it: for "
                                    "comparison only, not this run's guarantee (N is published)"),
        "target_epsilon": plan.target_epsilon,
        "noise_multiplier": plan.noise_multiplier,
        "sample_rate": plan.sample_rate,
        "steps": dp.steps,
        "planned_steps": plan.planned_steps,
        **({"max_reports_per_patient": plan.max_reports_per_patient} if plan.unit == "patient" else {}),
        "max_grad_norm": plan.max_grad_norm,
        "expected_batch_size": plan.expected_batch_size,
        "accountant": plan.accountant,
        "accountants": {"guarantee": "dp_accounting PLD, replace-one" if relation == "replace_one"
                        else f"Opacus {plan.accountant}",
                        "add_remove_figure": f"Opacus {plan.accountant}"},
        "sampling": "poisson",
        "randomness": RANDOMNESS[bool(plan.secure_mode)],
        "dataset": dataset,
        # N of the analysis, declared public (q, the steps and δ give it): at the patient unit the
        # number of patients; the number of training reports is then not published (replacing a
        # patient may change it)
        count: n_train,
        "public_facts": [f"the number of training {units} (sets q, the step count and the "
                         "default δ)", "the label schema",
                         "the config, including seed (no private mechanism draws from it)"],
        "guarantee": statement,
        "record_sets": record_sets,
        "independent_check": check,
    }
    if threshold_privacy is not None and threshold_privacy.get("epsilon_total") is not None:
        report["epsilon_total"] = threshold_privacy["epsilon_total"]
        report["epsilon_total_note"] = ("training and validation mechanisms composed (PLD, replace-one): the ε "
                                        "of a report in either split")
    return report

