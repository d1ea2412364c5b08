"""`radpriv label teacher=<ref> input=<csv | folder of .txt> output=<csv>`: teacher labels.

The teacher is any trained radpriv model — a run id, `runs:/<id>/model`, `models:/<name>@<alias>`,
`models:/<name>/<version>` or a bundle folder — resolved, read and run exactly as `radpriv
predict` does (radpriv/predict.py: input reading, model resolution, length-sorted batches with a
progress bar). What differs is the output: a *training set* for a student, so it keeps the text:

    id, text, <other input columns, e.g. a split or patient column>, <label 0/1 …>, prob_<label> …

with 0/1 at the teacher's stored per-label thresholds, and beside it `<output>.provenance.json`
(radpriv/teacher/provenance.py: teacher, its privacy facts, thresholds, labels, date, counts;
never text). `radpriv train data=csv data.path=<output> data.id_column=id` then trains a student
whose privacy.json states the teacher's guarantee too. `teacher.mode=pate` hands the arguments to
`radpriv pate` (radpriv/teacher/pate.py).
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

from radpriv.errors import ConfigError, DataError

log = logging.getLogger(__name__)

KEYS = ("teacher", "input", "output", "text_column", "id_column", "batch_size", "labels",
        "num_threads", "tracking_uri", "progress_bar", "teacher.mode", "precision")
ID, TEXT = "id", "text"


@dataclass
class LabelOptions:
    teacher: str
    input: Path
    output: Path
    text_columns: list[str] | None = None
    id_column: str | None = None
    batch_size: int = 32
    labels: list[str] | None = None
    num_threads: int | None = None
    tracking_uri: str | None = None
    progress_bar: bool = True
    precision: str | None = None  # None: $RADPRIV_PRECISION, else auto


def parse_args(args: Sequence[str]) -> LabelOptions:
    """`key=value` pairs (predict's conventions, `teacher=` instead of `model=`)."""
    from radpriv import predict

    values: dict[str, str] = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        key = {"tracking.uri": "tracking_uri", "trainer.num_threads": "num_threads",
               "trainer.precision": "precision"}.get(key, key)
        if not sep or key not in KEYS:
            raise ConfigError(f"label: unexpected argument {arg!r}; use key=value with keys {', '.join(KEYS)}")
        if value.strip():
            values[key] = value.strip()
    mode = values.pop("teacher.mode", "single")
    if mode != "single":
        raise ConfigError(f"teacher.mode={mode!r}: expected single (or pate, handled by radpriv pate)")
    missing = [k for k in ("teacher", "input", "output") if k not in values]
    if missing:
        raise ConfigError(f"label needs {' '.join(f'{k}=<…>' for k in missing)}, e.g. radpriv label "
                          "teacher=models:/ct@champion input=unlabelled.csv output=labelled.csv")
    # predict's parser checks the shared keys (numbers, lists, progress_bar) the same way
    p = predict.parse_args([f"{'model' if k == 'teacher' else k}={v}" for k, v in values.items()])
    return LabelOptions(teacher=p.model, input=p.input, output=p.output, text_columns=p.text_columns,
                        id_column=p.id_column, batch_size=p.batch_size, labels=p.labels,
                        num_threads=p.num_threads, tracking_uri=p.tracking_uri, progress_bar=p.progress_bar,
                        precision=p.precision)


@dataclass
class InputReports:
    ids: list[str]
    texts: list[str]
    extra_columns: list[str]         # passed through to the output (CSV input only)
    extra_rows: list[list[str]]


def read_input(options_input: Path, text_columns: list[str] | None, id_column: str | None) -> InputReports:
    """predict's reader, plus the input's other columns (a split or patient column survives)."""
    from radpriv import predict
    from radpriv.data._io import read_csv

    reports = predict.read_reports(options_input, text_columns, id_column)
    if not any(t.strip() for t in reports.texts):
        raise DataError(f"{options_input}: every report is empty; nothing to label")
    if reports.source != "csv":
        return InputReports(reports.ids, reports.texts, [], [[] for _ in reports.ids])
    table = read_csv(options_input, [], what="input CSV")
    columns = list(table.columns)
    used_text = text_columns or [next(c for c in predict.TEXT_COLUMNS if c in columns)]
    used_id = id_column or next((c for c in predict.ID_COLUMNS if c in columns), None)
    extra = [c for c in columns if c not in used_text and c != used_id]
    return InputReports(reports.ids, reports.texts, extra, [[row[c] for c in extra] for row in table.rows])


def check_columns(extra: Sequence[str], label_names: Sequence[str], path: Path) -> None:
    """The output must not hold a column twice: an input column named like a teacher label would
    mix the input's labels with the teacher's (a different schema) under one name."""
    from radpriv.predict import PROB_PREFIX

    reserved = {ID, TEXT, *label_names, *(PROB_PREFIX + n for n in label_names)}
    clash = [c for c in extra if c in reserved]
    if clash:
        raise DataError(f"{path}: line 1: input column(s) {clash} clash with the teacher's output "
                        f"columns (id, text, its {len(label_names)} labels and prob_<label>); drop or "
                        "rename them: the labelled CSV holds the teacher's labels only")


def write_labelled(output: Path, reports: InputReports, probs: torch.Tensor, thresholds: Sequence[float],
                   label_names: Sequence[str], empty: Sequence[bool]) -> None:
    """id, text, passed-through columns, 0/1 per label, prob_<label>; written then renamed."""
    from radpriv.predict import PROB_PREFIX

    fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow([ID, TEXT, *reports.extra_columns, *label_names, *(PROB_PREFIX + n for n in label_names)])
            t = torch.as_tensor(list(thresholds), dtype=probs.dtype)
            predicted = (probs >= t).to(torch.int64).tolist()
            rows = probs.tolist()
            for i, report_id in enumerate(reports.ids):
                head = [report_id, reports.texts[i], *reports.extra_rows[i]]
                if empty[i]:  # no text, no label: blank cells (the student's reader skips the row)
                    w.writerow([*head, *[""] * (2 * len(label_names))])
                else:
                    w.writerow([*head, *predicted[i], *(repr(p) for p in rows[i])])
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def label(options: LabelOptions) -> dict:
    """Read, resolve the teacher, check the schema, label, write CSV + provenance."""
    from radpriv import predict
    from radpriv.model.bundle import load_bundle, load_meta
    from radpriv.teacher import provenance
    from radpriv.tracking import registry
    from radpriv.tracking.model_ref import local_bundle, privacy_facts

    predict.check_writable(options.output)
    if options.output.resolve() == options.input.resolve():
        raise DataError(f"output={options.output} is the input; write the labels to another file")
    reports = read_input(options.input, options.text_columns, options.id_column)
    if options.num_threads:
        torch.set_num_threads(options.num_threads)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        source = local_bundle(options.teacher, options.tracking_uri, Path(tmp), f"teacher={options.teacher}")
        facts = privacy_facts(source, options.tracking_uri)
        meta = load_meta(source.folder)
        predict.check_labels(options.labels, meta["label_names"], options.teacher)
        check_columns(reports.extra_columns, meta["label_names"], options.input)
        guarantee = provenance.single_teacher_guarantee(facts)
        log.info("teacher %s: %s", source.display, registry.describe_facts(facts))
        model = load_bundle(source.folder, options.precision)
    t_load = time.perf_counter() - t0
    empty = [not t.strip() for t in reports.texts]
    keep = [i for i, e in enumerate(empty) if not e]
    if len(keep) < len(empty):
        log.warning("%d of %d reports have no text: their label cells are left blank", len(empty) - len(keep),
                    len(empty))
    probs = torch.full((len(reports.texts), len(model.label_names)), math.nan)
    t1 = time.perf_counter()
    probs[keep] = predict.predict_reports(model, [reports.texts[i] for i in keep], options.batch_size,
                                          options.progress_bar)
    t_label = time.perf_counter() - t1
    thresholds = model.thresholds  # the teacher's own, chosen on its validation split
    write_labelled(options.output, reports, probs, thresholds, model.label_names, empty)
    record = provenance.build(
        mode="teacher", teacher=options.teacher, labels=model.label_names, guarantee=guarantee,
        output=options.output, n_reports=len(reports.ids), n_labelled=len(keep),
        teacher_privacy={k: v for k, v in facts.items() if k != "labels"},
        thresholds=dict(zip(model.label_names, map(float, thresholds))),
        teacher_resolved=source.display, teacher_encoder=meta.get("encoder", {}).get("name"),
    )
    prov = provenance.write(record, options.output)
    if not guarantee["protected"]:
        log.warning("teacher labels: %s", guarantee["statement"])
    log.info("%d reports labelled in %.1f s (teacher load %.1f s) -> %s (+ %s)", len(keep), t_label, t_load,
             options.output, prov.name)
    return {"output": str(options.output), "provenance": str(prov), "teacher": options.teacher,
            "n_reports": len(reports.ids), "n_labelled": len(keep), "labels": list(model.label_names),
            "teacher_guarantee": guarantee, "time/label_s": round(t_label, 3),
            "student": f"radpriv train data=csv data.path={options.output} data.id_column=id"}


def label_command(args: Sequence[str]) -> dict:
    """`teacher.mode=pate` forwards everything to `radpriv pate` (one command, two modes)."""
    if any(a.strip() == "teacher.mode=pate" for a in args):
        from radpriv.teacher.pate import pate_command

        return pate_command([a for a in args if a.strip() != "teacher.mode=pate"])
    return label(parse_args(args))
