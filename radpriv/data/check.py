"""`radpriv data check`: can this dataset be trained on, and what does it look like?

`check_data(cfg)` reads the dataset a config names (through the same reader `radpriv train`
uses) and returns a summary made of counts only: reports and patients per split, reports per
patient (min / median / max, per split and overall), the privacy unit the config's
`privacy.unit` resolves to on this data and why (radpriv/data/patients.py), rows excluded and
why, label prevalence per split (positives, negatives, masked), token-length percentiles for the
tokenizer of `cfg.model` and the share truncated at `data.max_length`, and a list of problems.
It never returns or prints a word of report text: the only strings in it are paths, label
names, split names, exclusion reasons, the unit's reason (the format's patient source) and
messages built from counts.

Problems are `error` (the data cannot be trained on with this config: no usable rows, an
empty train split, an empty validation split when thresholds are chosen on it, an empty test
split, which `radpriv train` scores, a `privacy.unit` the data cannot have) or `warning` (a
label never positive, or with no known value, in train; many reports truncated; patients with
reports in more than one split; the tokenizer could not be loaded). With an error,
`check_data` raises `DataCheckFailed` carrying the summary; `radpriv data check` prints the
summary and exits 1 with the first error as a one-line reason. A reader's DataError (missing
file, bad column, bad value, ...) also exits 1 there, before any summary.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Sequence

import numpy as np
from omegaconf import DictConfig

from radpriv.data.patients import UNITS, PatientIndex, privacy_unit, resolve_unit
from radpriv.data.table import MASKED, SPLITS, ReportTable
from radpriv.errors import ConfigError, DataError, RadprivError

logger = logging.getLogger(__name__)

PERCENTILES = (50, 90, 95, 99)
ALL = "all"  # the whole table, beside the splits
TRUNCATION_WARNING_SHARE = 0.05  # warn when more than this share of reports is truncated
_UNTRUNCATED = 1_000_000  # a "max_length" no report reaches: lengths before truncation


class DataCheckFailed(DataError):
    """The data was read but cannot be trained on; `.summary` holds the check's counts."""

    def __init__(self, reason: str, summary: dict):
        super().__init__(reason)
        self.summary = summary


def label_prevalence(table: ReportTable) -> dict[str, dict[str, dict[str, float | int]]]:
    """split -> label -> positives, negatives, masked, prevalence (of the known entries)."""
    out: dict = {}
    for s in SPLITS:
        lab = table.labels[np.array([x == s for x in table.split], dtype=bool)]
        per: dict = {}
        for j, name in enumerate(table.label_names):
            pos = int((lab[:, j] == 1).sum())
            neg = int((lab[:, j] == 0).sum())
            masked = int((lab[:, j] == MASKED).sum())
            per[name] = {"positives": pos, "negatives": neg, "masked": masked,
                         "prevalence": round(pos / (pos + neg), 4) if pos + neg else None}
        out[s] = per
    return out


def token_lengths(texts: Sequence[str], tokenizer, max_length: int) -> dict:
    """Percentiles of the token count (special tokens included) and the share over max_length."""
    from radpriv.data.tokens import tokenize_texts

    if not texts:
        return {"n": 0}
    lengths = np.array([len(ids) for ids in tokenize_texts(list(texts), tokenizer, _UNTRUNCATED)])
    out: dict = {"n": int(lengths.size)}
    for p in PERCENTILES:
        out[f"p{p}"] = int(np.percentile(lengths, p, method="higher"))
    out["max"] = int(lengths.max())
    out["max_length"] = int(max_length)
    out["truncated"] = int((lengths > max_length).sum())
    out["truncated_share"] = round(float((lengths > max_length).mean()), 4)
    return out


def _spread(sizes: np.ndarray) -> dict | None:
    """min / median / max of reports per patient (None: no patient)."""
    if not sizes.size:
        return None
    return {"min": int(sizes.min()), "median": float(np.median(sizes)), "max": int(sizes.max())}


def patient_counts(table: ReportTable) -> tuple[dict | None, dict | None, dict | None]:
    """(patients, reports per patient, training reports of each patient) per split and `all`,
    the last as an array for the unit's cap; Nones when the table names no patient at all."""
    if table.patient_ids is None:
        return None, None, None
    # PatientIndex is what training counts with: a patient is its id, whatever its splits
    sizes = {s: PatientIndex.of(table.subset(s)).sizes() for s in SPLITS}
    sizes[ALL] = PatientIndex.of(table).sizes()
    return ({k: int(v.size) for k, v in sizes.items()}, {k: _spread(v) for k, v in sizes.items()}, sizes["train"])


def patients_in_several_splits(table: ReportTable) -> int:
    """Patients with reports in more than one split (a CSV's split column can do that)."""
    if table.patient_ids is None:
        return 0
    splits: dict[str, set] = {}
    for p, s in zip(table.patient_ids, table.split):
        splits.setdefault(p, set()).add(s)
    return sum(len(v) > 1 for v in splits.values())


def unit_summary(table: ReportTable, cfg: DictConfig, train_sizes: np.ndarray | None) -> tuple[dict, str | None]:
    """({setting, name, why, ...}, error or None): the unit `privacy.unit` gives on this table, as
    `radpriv train` resolves it; at the patient unit, how many training patients exceed the cap."""
    setting = cfg.privacy.unit
    shown = "auto" if setting is None else str(setting).strip().lower()
    if shown not in ("auto", *UNITS):
        resolve_unit(setting, table)  # a bad value is a bad command (exit 2), not a data problem
    try:
        unit, cap = privacy_unit(cfg.privacy, table)  # exactly as `radpriv train` resolves and checks them
    except ConfigError as e:
        if table.patient_ids is not None:  # a bad cap: a bad command too
            raise
        # privacy.unit=patient on data without patient ids: this data cannot be trained so
        return {"setting": shown, "name": None, "why": str(e)}, str(e)
    out = {"setting": shown, "name": unit.name, "why": unit.why}
    if unit.name == "patient" and train_sizes is not None:
        # not a problem: each step uses a random `cap` of such a patient's reports, by design
        out.update(max_reports_per_patient=cap, train_patients_over_cap=int((train_sizes > cap).sum()))
    return out, None


def _load_tokenizer(cfg: DictConfig):
    from radpriv.model.encoder import load_encoder, resolve_spec

    spec = resolve_spec(str(cfg.model.source))
    _, tokenizer = load_encoder(spec, seed=int(cfg.seed))
    return tokenizer


def summarize(table: ReportTable, cfg: DictConfig, tokenizer=None, tokenizer_error: str | None = None) -> dict:
    """The check's summary for a table already read (counts only; no text)."""
    problems: list[dict[str, str]] = []

    def problem(level: str, message: str) -> None:
        problems.append({"level": level, "message": message})

    counts = {s: table.split.count(s) for s in SPLITS}
    patients, per_patient, train_sizes = patient_counts(table)
    unit, unit_error = unit_summary(table, cfg, train_sizes)
    prevalence = label_prevalence(table)
    max_length = int(cfg.data.max_length)

    tokens: dict | None = None
    if tokenizer is not None:
        tokens = {"model": str(cfg.model.source), "all": token_lengths(table.texts, tokenizer, max_length)}
        share = tokens["all"].get("truncated_share", 0.0)
        if share > TRUNCATION_WARNING_SHARE:
            problem("warning", f"{share:.1%} of reports are longer than data.max_length={max_length} tokens "
                               f"(p95 {tokens['all']['p95']}, max {tokens['all']['max']}); consider raising it")
    elif tokenizer_error:
        problem("warning", f"token lengths not computed: {tokenizer_error}")

    if len(table) == 0:
        problem("error", "no usable reports")
    if counts["train"] == 0:
        problem("error", "the training split is empty")
    thresholds = str(cfg.trainer.thresholds)
    if counts["val"] == 0 and thresholds == "validation":
        problem("error", "the validation split is empty, and thresholds are chosen on it "
                         "(raise data.val_fraction, or set trainer.thresholds=fixed)")
    elif counts["val"] == 0:
        problem("warning", "the validation split is empty")
    if counts["test"] == 0:
        problem("error", "the test split is empty; radpriv train scores the model on it")
    if unit_error:
        problem("error", unit_error)
    mixed = patients_in_several_splits(table)
    if mixed:
        problem("warning", f"{mixed} patient(s) have reports in more than one split: the validation and test "
                           "metrics see patients the model was trained on")
    if counts["train"]:
        train = prevalence["train"]
        never = [n for n, v in train.items() if v["positives"] == 0]
        unknown = [n for n, v in train.items() if v["positives"] + v["negatives"] == 0]
        if never:
            problem("warning", f"{len(never)} label(s) never positive in the training split: {never}")
        if unknown:
            problem("warning", f"{len(unknown)} label(s) with no known (unmasked) value in the training "
                               f"split: {unknown}")

    errors = [p["message"] for p in problems if p["level"] == "error"]
    return {
        "ok": not errors,
        "dataset": table.name,
        "source": table.source,
        "n_reports": len(table),
        "reports": counts,
        "patients": patients,
        "reports_per_patient": per_patient,
        "unit": unit,
        "excluded": dict(table.excluded),
        "labels": list(table.label_names),
        "masked": {s: sum(v["masked"] for v in prevalence[s].values()) for s in SPLITS},
        "prevalence": prevalence,
        "tokens": tokens,
        "problems": problems,
    }


def check_data(cfg: DictConfig, load_tokenizer: Callable | None = None) -> dict:
    """Read `cfg.data` and summarise it; DataCheckFailed when it cannot be trained on.

    A reader's DataError (the input is rejected) propagates unchanged.
    """
    from radpriv.data.sources import load_table

    table = load_table(cfg.data, int(cfg.seed))
    tokenizer, tokenizer_error = None, None
    try:
        tokenizer = (load_tokenizer or _load_tokenizer)(cfg)
    except RadprivError as e:  # e.g. a hub model offline: the data check still runs
        tokenizer_error = str(e).splitlines()[0] if str(e) else type(e).__name__
    summary = summarize(table, cfg, tokenizer, tokenizer_error)
    errors = [p["message"] for p in summary["problems"] if p["level"] == "error"]
    if errors:
        raise DataCheckFailed(f"{table.name}: cannot be trained on: {errors[0]}"
                              + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""), summary)
    return summary


# --------------------------------------------------------------------------- printing

def _spread_text(spread: dict | None) -> str:
    return "-" if spread is None else f"{spread['min']}/{spread['median']:g}/{spread['max']}"


def _split_rows(summary: dict) -> list[str]:
    """reports, patients, reports per patient (min/median/max) and masked entries, per split and all."""
    pats, per = summary.get("patients"), summary.get("reports_per_patient")
    reports = {**summary["reports"], ALL: summary["n_reports"]}
    masked = {**summary["masked"], ALL: sum(summary["masked"].values())}
    lines = [f"{'split':<8}{'reports':>9}" + (f"{'patients':>10}{'reports/patient min/med/max':>29}" if pats else "")
             + f"{'masked':>9}"]
    for s in (*SPLITS, ALL):
        row = f"{s:<8}{reports[s]:>9}"
        if pats:
            row += f"{pats.get(s, '-'):>10}{_spread_text(per.get(s)):>29}"
        lines.append(row + f"{masked[s]:>9}")
    return lines


def _unit_lines(unit: dict | None) -> list[str]:
    """The privacy unit the config gives on this data, and why (older summaries have none)."""
    if not unit:
        return []
    if unit["name"] is None:
        return ["", f"unit      none (privacy.unit={unit['setting']}): {unit['why']}"]
    lines = ["", f"unit      {unit['name']} (privacy.unit={unit['setting']}): {unit['why']}"]
    over = unit.get("train_patients_over_cap")
    if over:
        cap = unit["max_reports_per_patient"]
        lines.append(f"          {over} training patient(s) have more than privacy.max_reports_per_patient={cap} "
                     f"reports: each step uses a random {cap} of theirs")
    return lines


def format_summary(summary: dict) -> str:
    """The summary as a human-readable table (counts only)."""
    lines = [f"dataset   {summary['dataset']}: {summary['n_reports']} usable reports",
             f"source    {summary['source']}"]
    excl = summary["excluded"]
    lines.append("excluded  " + (", ".join(f"{k}={v}" for k, v in excl.items()) if excl else "none"))
    lines.append("")
    lines += _split_rows(summary)
    lines += _unit_lines(summary.get("unit"))
    lines.append("")
    names = summary["labels"]
    width = max([len("label")] + [len(n) for n in names]) + 2
    lines.append(f"{'label':<{width}}" + "".join(f"{s + ' pos/known':>18}" for s in SPLITS))
    for n in names:
        cells = []
        for s in SPLITS:
            v = summary["prevalence"][s][n]
            known = v["positives"] + v["negatives"]
            pct = f"{100 * v['prevalence']:.1f}%" if v["prevalence"] is not None else "-"
            cells.append(f"{v['positives']}/{known} {pct:>6}")
        lines.append(f"{n:<{width}}" + "".join(f"{c:>18}" for c in cells))
    tok = summary.get("tokens")
    if tok and tok["all"].get("n"):
        a = tok["all"]
        lines.append("")
        lines.append(f"tokens ({tok['model']}): p50 {a['p50']}  p90 {a['p90']}  p95 {a['p95']}  "
                     f"p99 {a['p99']}  max {a['max']}; truncated at data.max_length={a['max_length']}: "
                     f"{a['truncated']} ({100 * a['truncated_share']:.1f}%)")
    lines.append("")
    if summary["problems"]:
        for p in summary["problems"]:
            lines.append(f"{p['level']}: {p['message']}")
    else:
        lines.append("no problems found")
    lines.append("status: " + ("OK, can be trained on" if summary["ok"] else "FAILED, cannot be trained on"))
    return "\n".join(lines)


DATA_USAGE = """usage: radpriv data check data=<name> [data.path=<...>] [model=<name>] [key=value ...]

  prints a summary of the dataset (reports and patients per split, reports per patient, the
  privacy unit privacy.unit gives and why, exclusions, label prevalence, token lengths for
  model=<name>'s tokenizer; never any report text), then one JSON line.
  exit 0: it can be trained on; 1: it cannot (the reason on stderr); 2: a bad command or override.
"""


def data_command(args: list[str]) -> int:
    """`radpriv data <subcommand> [overrides]` (called by radpriv.cli.run)."""
    from radpriv.config import compose

    if not args or args[0] in ("-h", "--help", "help"):
        print(DATA_USAGE)
        return 0 if args else 2
    if args[0] != "check":
        print(f"radpriv: error: unknown data command {args[0]!r}\n\n{DATA_USAGE}", file=sys.stderr)
        return 2
    cfg = compose(args[1:])  # a bad override is a ConfigError: exit 2 through radpriv.cli.main
    try:
        summary = check_data(cfg)
    except DataCheckFailed as e:
        print(format_summary(e.summary))
        print(json.dumps(e.summary, default=float))
        print(f"radpriv: error: {e}", file=sys.stderr)
        return 1
    except DataError as e:
        print(f"radpriv: error: {e}", file=sys.stderr)
        return 1
    print(format_summary(summary))
    print(json.dumps(summary, default=float))
    return 0
