"""Patient unit against report unit, on fabricated MIMIC-CXR and CT-RATE trees.

    python benchmarks/patient_unit.py OUT_DIR [--patients 500] [--epsilon 1] [--set key=value ...]

Fabricates, under OUT_DIR, the native layouts radpriv reads — a MIMIC-CXR report tree
(`files/pXX/p<subject>/s<study>.txt` + `mimic-cxr-2.0.0-chexpert.csv`) and a CT-RATE folder
(`dataset/radiology_text_reports/train_reports.csv` + `dataset/multi_abnormality_labels/
train_predicted_labels.csv`) — where every patient holds 1–6 reports (CT-RATE: scans, each
with 1–2 reconstructions) of invented sentences. A patient carries a persistent set of
findings that most of its reports repeat, as real patients do. Then, per layout, it trains the
same private run three times (same ε, same seed): at the patient unit with
`privacy.expected_batch_size` patients, at the patient unit with as many expected *reports* per
step as the report-unit run (b·N_patients/N_reports patients), and at the report unit; it
records test F1, AUROC, wall time and the privacy plan; and, for the report-unit run, what ε a patient
with k reports really gets (group privacy). Writes OUT_DIR/patient_unit.json and .md.

No real report text is used or written.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from radpriv.data.schemas import CHEXPERT14, CT_RATE18  # noqa: E402

FILLER = ("the invented lungs look clear", "no made up acute process", "fabricated bones are intact",
          "a pretend stable appearance", "the invented mediastinum is normal", "a made up limited exam",
          "fabricated soft tissues are unremarkable", "an invented prior is compared")


def _phrase(label: str) -> str:
    return f"invented finding of {label.lower()} is described"


def fabricate_patients(n_patients: int, labels: tuple[str, ...], seed: int) -> list[list[np.ndarray]]:
    """Per patient, 1–6 label vectors: a persistent set of findings repeated with probability 0.8,
    plus occasional new ones."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_patients):
        chronic = rng.random(len(labels)) < 0.15
        reports = []
        for _ in range(int(rng.integers(1, 7))):
            vec = (chronic & (rng.random(len(labels)) < 0.8)) | (rng.random(len(labels)) < 0.05)
            reports.append(vec.astype(int))
        out.append(reports)
    return out


def _text(vec: np.ndarray, labels: tuple[str, ...], rng: np.random.Generator) -> tuple[str, str]:
    found = [_phrase(labels[j]) for j in np.flatnonzero(vec)]
    findings = ". ".join(list(rng.choice(FILLER, size=2, replace=False)) + found) + "."
    impression = ("invented summary: " + ", ".join(labels[j].lower() for j in np.flatnonzero(vec)) + "."
                  if vec.any() else "no invented acute findings.")
    return findings, impression


def write_mimic_tree(root: Path, n_patients: int, seed: int) -> int:
    rng = np.random.default_rng(seed + 1)
    order = sorted(CHEXPERT14)  # the label CSV's alphabetical column order
    rows, n = [], 0
    for s, reports in enumerate(fabricate_patients(n_patients, CHEXPERT14, seed)):
        subject = 10000000 + s
        for t, vec in enumerate(reports):
            study = 50000000 + 10 * s + t
            findings, impression = _text(vec, CHEXPERT14, rng)
            path = root / "files" / f"p{str(subject)[:2]}" / f"p{subject}" / f"s{study}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"FINAL REPORT\n FINDINGS:\n {findings}\n \n IMPRESSION:\n {impression}\n")
            cells = {lab: ("1.0" if vec[CHEXPERT14.index(lab)] else "0.0") for lab in CHEXPERT14}
            if not vec.any():
                cells["No Finding"] = "1.0"
            rows.append([subject, study, *[cells[lab] for lab in order]])
            n += 1
    with (root / "mimic-cxr-2.0.0-chexpert.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["subject_id", "study_id", *order])
        w.writerows(rows)
    return n


def write_ct_rate(root: Path, n_patients: int, seed: int) -> int:
    rng = np.random.default_rng(seed + 2)
    texts, labels, n = [], [], 0
    for p, reports in enumerate(fabricate_patients(n_patients, CT_RATE18, seed)):
        for scan, vec in enumerate(reports):
            findings, impression = _text(vec, CT_RATE18, rng)
            for recon in range(1, int(rng.integers(1, 3)) + 1):  # reconstructions share a report
                name = f"train_{p + 1}_{'abcdef'[scan]}_{recon}.nii.gz"
                texts.append([name, "invented history", "invented technique", findings, impression])
                labels.append([name, *vec.tolist()])
            n += 1
    (root / "dataset" / "radiology_text_reports").mkdir(parents=True, exist_ok=True)
    (root / "dataset" / "multi_abnormality_labels").mkdir(parents=True, exist_ok=True)
    with (root / "dataset" / "radiology_text_reports" / "train_reports.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN"])
        w.writerows(texts)
    with (root / "dataset" / "multi_abnormality_labels" / "train_predicted_labels.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["VolumeName", *CT_RATE18])
        w.writerows(labels)
    return n


def train_once(overrides: list[str], uri: str) -> dict:
    from radpriv.config import compose
    from radpriv.train import train

    cfg = compose([*overrides, f"tracking.uri={uri}", "tracking.checkpoint_dir=null",
                   "tracking.log_model=false", "trainer.progress_bar=false"])
    t0 = time.perf_counter()
    summary = train(cfg)
    wall = time.perf_counter() - t0
    import mlflow

    run = mlflow.MlflowClient(uri).get_run(summary["run_id"])
    m = run.data.metrics
    return {"run_id": summary["run_id"], "wall_s": wall, "fit_s": m.get("time/fit_s"),
            "f1_weighted": m["test/f1_weighted"], "f1_macro": m["test/f1_macro"],
            "auroc_macro": m["test/auroc_macro"], "epsilon": m["privacy/epsilon"],
            "epsilon_add_remove": m["privacy/epsilon_add_remove"], "delta": m["privacy/delta"],
            "noise_multiplier": m["privacy/noise_multiplier"], "sample_rate": m["privacy/sample_rate"],
            "steps": int(m["privacy/steps"]), "unit": run.data.params.get("privacy.unit_resolved")}


def group_privacy(run: dict, ks=(1, 2, 3, 6)) -> list[dict]:
    """What a report-unit run gives a patient with k training reports.

    - add/remove of the whole patient, tight: each of its k reports joins a step independently
      with probability q and moves the sum by at most C, so one step is N(0, σ²) against the
      mixture Σ_j Binomial(j; k, q)·N(j, σ²) — dp-accounting's MixtureOfGaussiansDpEvent, PLD;
    - replace-one, from the run's own (ε, δ) by the group-privacy lemma: (kε, k·e^{(k−1)ε}·δ).
    """
    from dp_accounting import NeighboringRelation
    from dp_accounting.dp_event import MixtureOfGaussiansDpEvent
    from dp_accounting.pld import PLDAccountant
    from scipy.stats import binom

    sigma, q, steps, delta, eps = (run[k] for k in ("noise_multiplier", "sample_rate", "steps", "delta", "epsilon"))
    out = []
    for k in ks:
        event = MixtureOfGaussiansDpEvent(sigma, list(range(k + 1)), [float(binom.pmf(j, k, q)) for j in range(k + 1)])
        accountant = PLDAccountant(NeighboringRelation.ADD_OR_REMOVE_ONE, value_discretization_interval=1e-3)
        accountant.compose(event, steps)
        out.append({"k": k, "add_remove_patient_epsilon": float(accountant.get_epsilon(delta)),
                    "replace_one_group_epsilon": k * eps,
                    "replace_one_group_delta": k * math.exp((k - 1) * eps) * delta})
    return out


def markdown(result: dict) -> str:
    lines = [f"ε = {result['epsilon']} (replace-one), {result['patients']} fabricated patients per layout, "
             f"overrides {' '.join(result['overrides']) or '(none)'}", "",
             "| layout | unit | N (units) | reports | b | q | steps | σ | test F1 w | macro | AUROC "
             "| ε add/remove | fit s | wall s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        lines.append(f"| {r['layout']} | {r['unit']} | {r['n_units']} | {r['n_reports']} | "
                     f"{r['expected_batch_size']} | {r['sample_rate']:.4f} | "
                     f"{r['steps']} | {r['noise_multiplier']:.3f} | {r['f1_weighted']:.3f} | {r['f1_macro']:.3f} | "
                     f"{r['auroc_macro']:.3f} | {r['epsilon_add_remove']:.3f} | {r['fit_s']:.0f} | {r['wall_s']:.0f} |")
    lines += ["", "A patient with k training reports under the report-unit run:", "",
              "| layout | k | add/remove of the patient: ε (tight, PLD) "
              "| replace-one group bound: ε at δ_k |", "|---|---|---|---|"]
    for layout, rows in result["group_privacy"].items():
        for g in rows:
            bound = (f"{g['replace_one_group_epsilon']:.3f} at {g['replace_one_group_delta']:.2g}"
                     if g["replace_one_group_delta"] < 1 else "vacuous (δ_k ≥ 1)")
            lines.append(f"| {layout} | {g['k']} | {g['add_remove_patient_epsilon']:.3f} | {bound} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--patients", type=int, default=500)
    parser.add_argument("--epsilon", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--set", nargs="*", default=[], help="more Hydra overrides for every run")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    uri = f"sqlite:///{args.out / 'mlflow.db'}"
    layouts = {"mimic_cxr": (write_mimic_tree, "data=mimic_cxr"), "ct_rate": (write_ct_rate, "data=ct_rate")}
    runs, groups = [], {}
    for layout, (write, data) in layouts.items():
        root = args.out / layout
        if not root.exists():
            root.mkdir()
            write(root, args.patients, args.seed)
        base = [data, f"data.path={root}", f"privacy.epsilon={args.epsilon}", f"seed={args.seed}", *args.set]
        from radpriv.config import compose
        from radpriv.data.sources import load_table

        cfg = compose(base)
        train = load_table(cfg.data, args.seed).subset("train")
        n_reports, n_patients = len(train), len(set(train.patient_ids))
        b = int(cfg.privacy.expected_batch_size)
        # the same expected reports per step as the report-unit run: b·N_patients/N_reports patients
        matched = max(1, round(b * n_patients / n_reports))
        variants = [("patient", b), ("patient", matched), ("report", b)]
        for unit, batch in variants:
            run = train_once([*base, f"privacy.unit={unit}", f"privacy.expected_batch_size={batch}"], uri)
            run.update(layout=layout, n_reports=n_reports, expected_batch_size=batch,
                       n_units=n_patients if unit == "patient" else n_reports)
            runs.append(run)
            print(json.dumps(run), flush=True)
            if unit == "report":
                groups[layout] = group_privacy(run)
    result = {"epsilon": args.epsilon, "patients": args.patients, "overrides": args.set, "runs": runs,
              "group_privacy": groups}
    (args.out / "patient_unit.json").write_text(json.dumps(result, indent=2))
    (args.out / "patient_unit.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
