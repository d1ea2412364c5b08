"""The teacher-labelling study: teacher-labelled students on ct_rate_text, with both guarantees.

    python benchmarks/teacher_study.py OUT_DIR [--epsilon 10] [--k 5] [--sigmas 2 20]
                                       [--set data.max_length=256 ...]

The labelled training reports of `data=ct_rate_text` (seeded split) are cut by patient into an
expert half (`data.train_shard=0/2`, labels known) and an unlabelled half (`1/2`, labels
hidden from the teachers and students). Every model is scored on the same validation and test
reports. Rows:

- teacher: non-private, on the expert half;
- student on the teacher's labels of the unlabelled half (DP at --epsilon; expert reports NOT
  protected);
- students on PATE labels (k teachers on the expert half, each σ in --sigmas), DP at --epsilon;
  expert reports protected at PATE's ε;
- student on the expert half itself (DP; its ε is the expert reports' ε);
- student on the unlabelled half's true labels (an oracle: what perfect labels would give).

OUT_DIR receives the CSVs (they hold report text: keep OUT_DIR outside the project and away
from shared storage), one JSON line per finished step in results.jsonl (a rerun skips those),
and table.md. Every step is a `radpriv` command run in its own process; the expert-report
column of the table is read back from each student's own privacy.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def radpriv(*args: str) -> dict:
    """Run one radpriv command; its final JSON line (a failure stops the study with its error)."""
    t0 = time.perf_counter()
    print("$ radpriv " + " ".join(shlex.quote(a) for a in args), flush=True)
    proc = subprocess.run([sys.executable, "-m", "radpriv.cli", *args], capture_output=True, text=True)
    if proc.returncode:
        tail = proc.stderr.strip().splitlines()[-3:]
        raise SystemExit(f"failed ({proc.returncode}): {' | '.join(tail)}")
    out = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    return out


def student(*args: str) -> dict:
    """A student's training run, with the two guarantees its privacy.json states."""
    import mlflow

    out = radpriv("train", *args)
    facts = mlflow.artifacts.load_dict(f"runs:/{out['run_id']}/privacy.json")
    out["guarantees"] = facts.get("guarantees") or {}
    return out


def write_inputs(out: Path, seed: int) -> tuple[Path, Path, list[str]]:
    """unlabelled.csv (id, text, split=train) and eval.csv (val/test with their true labels)."""
    from radpriv.config import compose
    from radpriv.data.sources import load_table

    table = load_table(compose(["data=ct_rate_text", "data.train_shard=1/2", f"seed={seed}"]).data, seed)
    names = list(table.label_names)
    unlabelled, evaluation = out / "unlabelled.csv", out / "eval.csv"
    with unlabelled.open("w", newline="", encoding="utf-8") as fu, \
            evaluation.open("w", newline="", encoding="utf-8") as fe:
        wu, we = csv.writer(fu), csv.writer(fe)
        wu.writerow(["id", "text", "split"])
        we.writerow(["id", "text", "split", *names])
        for i, (rid, text, split) in enumerate(zip(table.ids, table.texts, table.split)):
            if split == "train":
                wu.writerow([rid, text, "train"])
            else:
                we.writerow([rid, text, split, *(int(v) for v in table.labels[i])])
    return unlabelled, evaluation, names


def student_csv(labelled: Path, evaluation: Path, names: list[str]) -> Path:
    """The teacher-labelled training rows plus the true-labelled val/test rows, provenance beside."""
    target = labelled.with_name(labelled.stem + "_student.csv")
    columns = ["id", "text", "split", *names]
    rows = []
    for source in (labelled, evaluation):
        with source.open(encoding="utf-8") as f:
            rows += [{k: r[k] for k in columns} for r in csv.DictReader(f)]
    with target.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    shutil.copy(str(labelled) + ".provenance.json", str(target) + ".provenance.json")
    return target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--epsilon", default="10", help="the students' ε")
    ap.add_argument("--k", type=int, default=5, help="PATE teachers")
    ap.add_argument("--sigmas", type=float, nargs="+", default=[2.0, 20.0], help="PATE vote noise levels")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--set", nargs="*", default=[], help="overrides for every training run")
    args = ap.parse_args()
    out = args.out.resolve()
    if ROOT in out.parents or out == ROOT:
        raise SystemExit(f"{out}: inside the project; its CSVs hold report text — choose a folder outside it")
    out.mkdir(parents=True, exist_ok=True)
    done_file = out / "results.jsonl"
    done = {}
    if done_file.exists():
        done = {r["step"]: r for r in map(json.loads, done_file.read_text().splitlines())}

    def step(name: str, fn) -> dict:
        if name not in done:
            record = {"step": name, **fn()}
            with done_file.open("a") as f:
                f.write(json.dumps(record) + "\n")
            done[name] = record
        return done[name]

    common = ["tracking.checkpoint_dir=null", "trainer.progress_bar=false", f"seed={args.seed}", *args.set]
    csv_args = ["data=csv", "data.id_column=id", "data.split_column=split", "data.text_column=text"]
    private = f"privacy.epsilon={args.epsilon}"
    unlabelled, evaluation, names = write_inputs(out, args.seed)

    teacher = step("teacher", lambda: radpriv("train", "data=ct_rate_text", "data.train_shard=0/2",
                                              "privacy.epsilon=null", *common))
    labelled = out / "teacher_labels.csv"
    step("label", lambda: radpriv("label", f"teacher={teacher['run_id']}", f"input={unlabelled}",
                                  f"output={labelled}", "progress_bar=false"))
    step("student_teacher", lambda: student(*csv_args, f"data.path={student_csv(labelled, evaluation, names)}",
                                            private, *common))
    for sigma in args.sigmas:
        pate_out = out / f"pate_sigma{sigma:g}.csv"
        step(f"pate_sigma{sigma:g}", lambda sigma=sigma, pate_out=pate_out: radpriv(
            "pate", "data=ct_rate_text", "data.train_shard=0/2", f"pate.k={args.k}", f"pate.sigma={sigma}",
            f"pate.input={unlabelled}", f"pate.output={pate_out}", "pate.progress_bar=false",
            *common))
        step(f"student_pate_sigma{sigma:g}", lambda pate_out=pate_out: student(
            *csv_args, f"data.path={student_csv(pate_out, evaluation, names)}", private, *common))
    step("student_expert", lambda: student("data=ct_rate_text", "data.train_shard=0/2", private, *common))
    step("student_oracle", lambda: student("data=ct_rate_text", "data.train_shard=1/2", private, *common))
    text = table(done, args)
    (out / "table.md").write_text(text)
    print(text)


def table(done: dict, args) -> str:
    def scores(name):
        m = done[name].get("metrics", {})
        return f"{m.get('test/f1_weighted', float('nan')):.3f} | {m.get('test/auroc_macro', float('nan')):.3f}"

    def eps(name):
        value = done[name].get("metrics", {}).get("privacy/epsilon")
        return "∞" if value is None else f"{value:.3g}"

    def expert(name):
        """What the student's own privacy.json says of the teacher's (expert) training reports."""
        said = done[name].get("guarantees", {}).get("teacher_training_reports", "")
        return "NOT PROTECTED" if said.startswith("NOT PROTECTED") else said.split("-DP")[0] + "-DP"

    rows = ["| model (test split) | trained on | ε, its training reports | ε, expert reports | F1 w | AUROC |",
            "|---|---|---|---|---|---|",
            f"| teacher, non-private | expert half, true labels | ∞ | ∞ (not private) | {scores('teacher')} |",
            f"| student, DP | unlabelled half, teacher labels | {eps('student_teacher')} | "
            f"{expert('student_teacher')} | {scores('student_teacher')} |"]
    for sigma in args.sigmas:
        name = f"student_pate_sigma{sigma:g}"
        rows.append(f"| student, DP | unlabelled half, PATE labels (k={args.k}, σ={sigma:g}) | {eps(name)} | "
                    f"{expert(name)} | {scores(name)} |")
    rows.append(f"| student, DP | expert half, true labels | {eps('student_expert')} | = its own ε | "
                f"{scores('student_expert')} |")
    rows.append(f"| student, DP (oracle) | unlabelled half, true labels | {eps('student_oracle')} | — (no expert "
                f"data used) | {scores('student_oracle')} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    main()
