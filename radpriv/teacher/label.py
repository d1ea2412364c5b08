"""`radpriv label teacher=<ref> input=<csv | folder of .txt> output=<csv>`: teacher labels.

The teacher is any trained radpriv model — a run id, `runs:/<id>/model`, `models:/<name>@<alias>`,
`models:/<name>/<version>` or a bundle folder — resolved, read and run exactly as `radpriv
predict` does (radpriv/labelling.py: input reading, length-sorted batches with a progress bar;
radpriv/tracking/model_ref.py: model resolution). What differs is the output: a *training set*
for a student, so it keeps the text:

    id, text, <other input columns, e.g. a split or patient column>, <label 0/1 …>, prob_<label> …

with 0/1 at the teacher's stored per-label thresholds, and beside it `<output>.provenance.json`
(radpriv/teacher/provenance.py: teacher, its privacy facts, thresholds, labels, date, counts;
never text). `radpriv train data=csv data.path=<output> data.id_column=id` then trains a student
whose privacy.json states the teacher's guarantee too. `teacher.mode=pate` is `radpriv pate`
(radpriv/teacher/pate.py; radpriv/cli.py hands the arguments over).
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from radpriv import cli_args, labelling
from radpriv.errors import ConfigError, DataError

log = logging.getLogger(__name__)

KEYS = ("teacher", "input", "output", "text_column", "id_column", "batch_size", "labels",
        "num_threads", "tracking_uri", "progress_bar", "teacher.mode", "precision")


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
    """`key=value` pairs (radpriv/cli_args.py; predict's keys, `teacher=` instead of `model=`)."""
    parsed = cli_args.parse(args, command="label", keys=KEYS, required=("teacher", "input", "output"),
                            example="radpriv label teacher=models:/ct@champion input=unlabelled.csv "
                                    "output=labelled.csv")
    mode = parsed.get("teacher.mode", "single")
    if mode != "single":
        raise ConfigError(f"teacher.mode={mode!r}: expected single (or pate, handled by radpriv pate)")
    return LabelOptions(
        teacher=parsed["teacher"], input=Path(parsed["input"]).expanduser(),
        output=Path(parsed["output"]).expanduser(),
        text_columns=cli_args.comma_list(parsed.get("text_column")),
        id_column=parsed.get("id_column"), batch_size=cli_args.whole_number(parsed, "batch_size", 32),
        labels=labelling.requested_labels(parsed["labels"]) if "labels" in parsed else None,
        num_threads=cli_args.whole_number(parsed, "num_threads", None), tracking_uri=parsed.get("tracking_uri"),
        progress_bar=cli_args.boolean(parsed, "progress_bar", True),
        precision=labelling.precision_option(parsed.get("precision")),
    )


def label(options: LabelOptions) -> dict:
    """Read, resolve the teacher, check the schema, label, write CSV + provenance."""
    from radpriv.model.bundle import load_bundle, load_meta
    from radpriv.teacher import provenance
    from radpriv.tracking import registry
    from radpriv.tracking.model_ref import local_bundle, privacy_facts

    labelling.check_writable(options.output)
    if options.output.resolve() == options.input.resolve():
        raise DataError(f"output={options.output} is the input; write the labels to another file")
    reports = labelling.read_input(options.input, options.text_columns, options.id_column)
    if options.num_threads:
        torch.set_num_threads(options.num_threads)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        source = local_bundle(options.teacher, options.tracking_uri, Path(tmp), f"teacher={options.teacher}")
        facts = privacy_facts(source, options.tracking_uri)
        meta = load_meta(source.folder)
        labelling.check_labels(options.labels, meta["label_names"], options.teacher)
        labelling.check_columns(reports.extra_columns, meta["label_names"], options.input)
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
    probs[keep] = labelling.predict_reports(model, [reports.texts[i] for i in keep], options.batch_size,
                                          options.progress_bar)
    t_label = time.perf_counter() - t1
    thresholds = model.thresholds  # the teacher's own, chosen on its validation split
    labelling.write_labelled(options.output, reports, probs, thresholds, model.label_names, empty)
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
    """`radpriv label` with teacher.mode=single (radpriv/cli.py hands teacher.mode=pate to `radpriv pate`)."""
    return label(parse_args(args))
