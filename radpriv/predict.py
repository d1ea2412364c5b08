"""`radpriv predict model=<ref> input=<csv | folder of .txt> output=<csv>`: label new reports.

The model is any trained radpriv model: a run id, `runs:/<id>/model`, `models:/<name>@<alias>`,
`models:/<name>/<version>` (resolved by radpriv/tracking/model_ref.py) or a local bundle folder
(one holding radpriv_model.json, e.g. a downloaded `model/` artifact). The output CSV has, per
input report, its id, one 0/1 column per label (at the per-label thresholds stored with the
model, chosen on its validation split; 0.5 where a model stores none) and one `prob_<label>`
column per label.

Arguments are `key=value` pairs (radpriv/cli_args.py) rather than Hydra overrides: `model=` names
a model to load, not the training config group, and `labels=a,b` is a list, not a Hydra sweep.
Reading, scoring and writing are radpriv/labelling.py's, shared with `radpriv label` and `pate`.

Nothing is written to the tracking store and no report text leaves the input: stderr gets the
model's privacy facts (one line), counts and timings, never a report.
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

log = logging.getLogger(__name__)

KEYS = ("model", "input", "output", "text_column", "id_column", "batch_size", "labels",
        "num_threads", "tracking_uri", "progress_bar", "precision")


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
    """`key=value` pairs (radpriv/cli_args.py) → PredictOptions; an empty value means "not given"."""
    parsed = cli_args.parse(args, command="predict", keys=KEYS, required=("model", "input", "output"),
                            example="radpriv predict model=models:/chexpert@champion input=reports.csv "
                                    "output=labels.csv")
    return PredictOptions(
        model=parsed["model"], input=Path(parsed["input"]).expanduser(),
        output=Path(parsed["output"]).expanduser(),
        text_columns=cli_args.comma_list(parsed.get("text_column")),
        id_column=parsed.get("id_column"), batch_size=cli_args.whole_number(parsed, "batch_size", 32),
        labels=labelling.requested_labels(parsed["labels"]) if "labels" in parsed else None,
        num_threads=cli_args.whole_number(parsed, "num_threads", None), tracking_uri=parsed.get("tracking_uri"),
        progress_bar=cli_args.boolean(parsed, "progress_bar", True),
        precision=labelling.precision_option(parsed.get("precision")),
    )


def predict(options: PredictOptions) -> dict:
    """Read, load, check, predict, write; returns the summary printed as the final JSON line."""
    from radpriv.model.bundle import load_bundle, load_meta
    from radpriv.tracking import registry
    from radpriv.tracking.model_ref import local_bundle, privacy_facts

    labelling.check_writable(options.output)
    reports = labelling.read_reports(options.input, options.text_columns, options.id_column)
    if options.num_threads:
        torch.set_num_threads(options.num_threads)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        source = local_bundle(options.model, options.tracking_uri, Path(tmp), f"model={options.model}")
        facts = privacy_facts(source, options.tracking_uri)
        meta = load_meta(source.folder)
        labelling.check_labels(options.labels, meta["label_names"], options.model)
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
        probs[keep] = labelling.predict_reports(model, [reports.texts[i] for i in keep], options.batch_size,
                                      options.progress_bar)
    t_predict = time.perf_counter() - t1
    thresholds = list(meta.get("thresholds") or [0.5] * len(model.label_names))
    labelling.write_predictions(options.output, reports.ids, probs, thresholds, model.label_names, empty)
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
