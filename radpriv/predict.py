"""`radpriv predict model=<ref> input=<csv | folder of .txt> output=<csv>`: label new reports.

The model is any trained radpriv model: a run id, `runs:/<id>/model`, `models:/<name>@<alias>`,
`models:/<name>/<version>` (resolved by radpriv/tracking/model_ref.py) or a local bundle folder
(one holding radpriv_model.json, e.g. a downloaded `model/` artifact). The output CSV has, per
input report, its id, one 0/1 column per label (at the per-label thresholds stored with the
model, chosen on its validation split; 0.5 where a model stores none) and one `prob_<label>`
column per label.

Arguments are `key=value` pairs parsed here rather than by Hydra: `model=` names a model to
load, not the training config group, and `labels=a,b` is a list, not a Hydra sweep.

Nothing is written to the tracking store and no report text leaves the input: stderr gets the
model's privacy facts (one line), counts and timings, never a report.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from radpriv.errors import ConfigError, DataError, ModelError

log = logging.getLogger(__name__)

# columns tried, in order, when text_column= / id_column= are not given
TEXT_COLUMNS = ("text", "report_text", "report")
ID_COLUMNS = ("id", "uid", "AccessionNo", "report_id", "study_id", "filename", "VolumeName")
KEYS = ("model", "input", "output", "text_column", "id_column", "batch_size", "labels",
        "num_threads", "tracking_uri", "progress_bar", "precision")
PROB_PREFIX = "prob_"


@dataclass
class PredictOptions:
    model: str
    input: Path
    output: Path
    text_columns: list[str] | None = None
    id_column: str | None = None
    batch_size: int = 32
    labels: list[str] | None = None
    num_threads: int | None = None
    tracking_uri: str | None = None
    progress_bar: bool = True
    # None: $RADPRIV_PRECISION, else auto (radpriv/model/precision.py)
    precision: str | None = None


def parse_args(args: Sequence[str]) -> PredictOptions:
    """`key=value` pairs → PredictOptions; an empty value means "not given"."""
    values: dict[str, str] = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        key = {"tracking.uri": "tracking_uri", "trainer.num_threads": "num_threads",
               "trainer.precision": "precision"}.get(key, key)
        if not sep or key not in KEYS:
            raise ConfigError(f"predict: unexpected argument {arg!r}; use key=value with keys "
                              f"{', '.join(KEYS)}")
        if value.strip():
            values[key] = value.strip()
    missing = [k for k in ("model", "input", "output") if k not in values]
    if missing:
        raise ConfigError(f"predict needs {' '.join(f'{k}=<…>' for k in missing)}, e.g. "
                          "radpriv predict model=models:/chexpert@champion input=reports.csv output=labels.csv")

    def integer(key: str, default: int | None) -> int | None:
        if key not in values:
            return default
        try:
            n = int(values[key])
        except ValueError:
            n = 0
        if n < 1:
            raise ConfigError(f"{key}={values[key]!r}: expected a whole number ≥ 1")
        return n

    def split(v: str) -> list[str]:
        return [x.strip() for x in v.split(",") if x.strip()]

    progress = values.get("progress_bar", "true").lower()
    if progress not in ("true", "false", "1", "0"):
        raise ConfigError(f"progress_bar={values['progress_bar']!r}: expected true or false")
    return PredictOptions(
        model=values["model"], input=Path(values["input"]).expanduser(),
        output=Path(values["output"]).expanduser(),
        text_columns=split(values["text_column"]) if "text_column" in values else None,
        id_column=values.get("id_column"), batch_size=integer("batch_size", 32),
        labels=_requested_labels(values["labels"]) if "labels" in values else None,
        num_threads=integer("num_threads", None), tracking_uri=values.get("tracking_uri"),
        progress_bar=progress in ("true", "1"), precision=_precision(values.get("precision")),
    )


def _precision(value: str | None) -> str | None:
    """auto | 32-true | bf16-mixed, checked now (None: $RADPRIV_PRECISION, else auto)."""
    from radpriv.model.precision import resolve_precision

    return None if value is None else resolve_precision(value, "cpu", "precision")


def _requested_labels(value: str) -> list[str]:
    """`labels=` as a schema name (chexpert14, negbio14, ct_rate18) or a comma list of labels."""
    from radpriv.data.schemas import CHEXPERT14, CT_RATE18, NEGBIO14

    schemas = {"chexpert14": CHEXPERT14, "negbio14": NEGBIO14, "ct_rate18": CT_RATE18}
    if value.lower() in schemas:
        return list(schemas[value.lower()])
    return [x.strip() for x in value.split(",") if x.strip()]


# --------------------------------------------------------------------------- input

@dataclass
class Reports:
    ids: list[str]
    texts: list[str]
    source: str  # "csv" | "txt"


def read_reports(path: Path, text_columns: list[str] | None, id_column: str | None) -> Reports:
    """Reports from a CSV (one row each) or a folder of .txt files (one report each, id = stem)."""
    if not path.exists():
        raise DataError(f"{path}: input not found; give input=<a CSV file or a folder of .txt reports>")
    if path.is_dir():
        return _read_txt_dir(path)
    return _read_csv(path, text_columns, id_column)


def _read_csv(path: Path, text_columns: list[str] | None, id_column: str | None) -> Reports:
    from radpriv.data._io import read_csv

    if path.stat().st_size == 0:
        raise DataError(f"{path}: the input file is empty; expected a header line and one row per report")
    table = read_csv(path, [], what="input CSV")
    if not table.rows:
        raise DataError(f"{path}: no report rows below the header")
    columns = list(table.columns)
    if text_columns is None:
        found = next((c for c in TEXT_COLUMNS if c in columns), None)
        if found is None:
            raise DataError(f"{path}: line 1: no text column ({', '.join(TEXT_COLUMNS)}) in {columns}; "
                            "name it with text_column=<column> (or a,b to join several)")
        text_columns = [found]
    missing = [c for c in text_columns if c not in columns]
    if missing:
        raise DataError(f"{path}: line 1: text column(s) {missing} not found in {columns}; "
                        "set text_column=<column> (or a,b to join several)")
    if id_column is not None and id_column not in columns:
        raise DataError(f"{path}: line 1: id column {id_column!r} not found in {columns}; "
                        "set id_column=<column>")
    id_column = id_column or next((c for c in ID_COLUMNS if c in columns), None)
    if id_column is None:
        log.info("no id column (%s) in %s: ids are row numbers from 1", ", ".join(ID_COLUMNS), path.name)
    # several sections (e.g. Open-i findings,impression) are joined as the readers join them
    texts = [" ".join(t for t in (row[c].strip() for c in text_columns) if t) for row in table.rows]
    ids = ([row[id_column] for row in table.rows] if id_column
           else [str(i + 1) for i in range(len(table.rows))])
    return Reports(ids=ids, texts=texts, source="csv")


def _read_txt_dir(path: Path) -> Reports:
    from radpriv.data._io import read_text_utf8

    files = sorted(p for p in path.rglob("*.txt") if p.is_file())
    if not files:
        raise DataError(f"{path}: no .txt files in this folder (searched recursively); give a CSV "
                        "or a folder of one-report .txt files")
    stems = [p.stem for p in files]
    if len(set(stems)) < len(stems):
        # e.g. two folders holding a report of the same name: keep ids unambiguous
        log.info("repeated file names under %s: ids are paths relative to it", path)
        stems = [p.relative_to(path).with_suffix("").as_posix() for p in files]
    return Reports(ids=stems, texts=[read_text_utf8(p).strip() for p in files], source="txt")


# --------------------------------------------------------------------------- output

def check_writable(output: Path) -> None:
    """Fail before any work when the output cannot be written."""
    if output.is_dir():
        raise DataError(f"{output}: is a folder; give output=<file>.csv")
    parent = output.parent
    if parent.exists() and not parent.is_dir():
        raise DataError(f"{output}: {parent} is a file, not a folder; choose a writable output path")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{output}: cannot create its folder ({e.strerror or type(e).__name__}); "
                        "choose a writable output path") from None
    if not os.access(parent, os.W_OK | os.X_OK) or (output.exists() and not os.access(output, os.W_OK)):
        raise DataError(f"{output}: not writable; choose a writable output path")


def write_predictions(output: Path, ids: Sequence[str], probs: torch.Tensor, thresholds: Sequence[float],
                      label_names: Sequence[str], empty: Sequence[bool]) -> None:
    """id, one 0/1 column per label, one prob_<label> column per label; written then renamed,
    so an interrupted run never leaves a half-written file under the output name."""
    fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["id", *label_names, *(PROB_PREFIX + n for n in label_names)])
            t = torch.as_tensor(list(thresholds), dtype=probs.dtype)
            predicted = (probs >= t).to(torch.int64).tolist()
            rows = probs.tolist()
            for i, report_id in enumerate(ids):
                if empty[i]:  # no text, no prediction: blank cells rather than a guess
                    w.writerow([report_id, *[""] * (2 * len(label_names))])
                else:
                    w.writerow([report_id, *predicted[i], *(repr(p) for p in rows[i])])
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- model

def check_labels(requested: Sequence[str] | None, label_names: Sequence[str], ref: str) -> None:
    """The model must predict exactly the labels asked for (any order)."""
    if requested is None:
        return
    missing = [x for x in requested if x not in label_names]
    extra = [x for x in label_names if x not in requested]
    if missing or extra:
        def some(xs: list[str]) -> str:
            return ", ".join(xs[:3]) + (f", … ({len(xs)} in all)" if len(xs) > 3 else "")

        parts = ([f"it lacks {some(missing)}"] if missing else []) + \
                ([f"it also predicts {some(extra)}"] if extra else [])
        raise ModelError(f"model {ref}: its {len(label_names)} labels are not the label schema asked "
                         f"for with labels= ({'; '.join(parts)}); use a model trained on that schema")


# --------------------------------------------------------------------------- predict

def predict_reports(model, texts: Sequence[str], batch_size: int, progress: bool = True) -> torch.Tensor:
    """Probabilities for every text, in input order, with a progress bar.

    Texts are sorted by length once, then scored in blocks of a few batches by the bundle's
    `predict_proba` (which length-sorts again, by tokens, inside a block): batches pad little,
    the bar moves, and the numbers are those of the in-process model.
    """
    from tqdm.auto import tqdm

    from radpriv.model.bundle import predict_proba

    out = torch.zeros((len(texts), len(model.label_names)))
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    block = batch_size * 8
    with torch.inference_mode(), tqdm(total=len(texts), unit="report", disable=not progress,
                                      desc="predict", dynamic_ncols=True) as bar:
        for start in range(0, len(order), block):
            idx = order[start:start + block]
            out[idx] = predict_proba(model, [texts[i] for i in idx], batch_size=batch_size)
            bar.update(len(idx))
    return out


def predict(options: PredictOptions) -> dict:
    """Read, load, check, predict, write; returns the summary printed as the final JSON line."""
    from radpriv.model.bundle import load_bundle, load_meta
    from radpriv.tracking import registry
    from radpriv.tracking.model_ref import local_bundle, privacy_facts

    check_writable(options.output)
    reports = read_reports(options.input, options.text_columns, options.id_column)
    if options.num_threads:
        torch.set_num_threads(options.num_threads)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        source = local_bundle(options.model, options.tracking_uri, Path(tmp), f"model={options.model}")
        facts = privacy_facts(source, options.tracking_uri)
        meta = load_meta(source.folder)
        check_labels(options.labels, meta["label_names"], options.model)
        log.info("model %s: %s", source.display, registry.describe_facts(facts))
        model = load_bundle(source.folder, options.precision)
    t_load = time.perf_counter() - t0
    empty = [not t.strip() for t in reports.texts]
    n_empty = sum(empty)
    if n_empty:
        log.warning("%d of %d reports have no text: their output cells are left blank", n_empty, len(empty))
    keep = [i for i, e in enumerate(empty) if not e]
    probs = torch.full((len(reports.texts), len(model.label_names)), math.nan)
    t1 = time.perf_counter()
    if keep:
        probs[keep] = predict_reports(model, [reports.texts[i] for i in keep], options.batch_size,
                                      options.progress_bar)
    t_predict = time.perf_counter() - t1
    thresholds = list(meta.get("thresholds") or [0.5] * len(model.label_names))
    write_predictions(options.output, reports.ids, probs, thresholds, model.label_names, empty)
    rate = len(keep) / t_predict if t_predict > 0 else float("inf")
    log.info("%d reports in %.1f s (%.1f reports/s, %s; model load %.1f s) -> %s", len(keep), t_predict,
             rate, model.precision, t_load, options.output)
    return {"output": str(options.output), "model": options.model, "n_reports": len(reports.texts),
            "n_predicted": len(keep), "n_empty": n_empty, "labels": list(model.label_names),
            "privacy": {k: v for k, v in facts.items() if k != "labels"}, "time/load_s": round(t_load, 3),
            "time/predict_s": round(t_predict, 3), "reports_per_s": round(rate, 2),
            "precision": model.precision}


def predict_command(args: Sequence[str]) -> dict:
    return predict(parse_args(args))
