"""The MLflow pyfunc model: a DataFrame of report texts in, label probabilities out.

Input: a DataFrame with a `text` column (or a list of strings). Output: one probability
column per label, in the model's label order. The per-label thresholds travel in the bundle's
`radpriv_model.json`.

Every call is checked before any tokenising (`check_texts`): at most MAX_ROWS_PER_REQUEST
reports, each a non-empty string of at most MAX_REPORT_CHARS characters, and a `batch_size`
parameter between 1 and MAX_ROWS_PER_REQUEST. A refusal is a RequestError whose message names
row numbers and limits, never the text: served by `radpriv serve` it is the HTTP 400 answer.
The row limit bounds one request's memory and latency; to label a large file use
`radpriv predict`, which batches it.
"""

from __future__ import annotations

import mlflow.pyfunc
import pandas as pd

from radpriv.errors import RequestError

# A made-up sentence, so that no report text is ever logged as the model's input example.
INPUT_EXAMPLE_TEXT = "synthetic example input for the radpriv schema; not a patient report"

MAX_ROWS_PER_REQUEST = 1000
MAX_REPORT_CHARS = 50_000


def texts_of(model_input) -> list:
    """The report column of a pyfunc input: a DataFrame's `text` column, or a list of strings."""
    if isinstance(model_input, pd.DataFrame):
        if "text" not in model_input.columns:
            raise RequestError(f"the request has no `text` column (it has {model_input.shape[1]} "
                               "other column(s)); send one report per row in a column named text")
        return model_input["text"].tolist()
    if isinstance(model_input, (str, bytes, dict)):
        raise RequestError("expected one report per row in a column named text; got a single value")
    return list(model_input)


def check_texts(texts: list) -> list[str]:
    """The texts, if every row is a usable report; else a RequestError naming the first bad rows.

    Row numbers count from 0 in request order. The message never quotes a report.
    """
    if not texts:
        raise RequestError("the request has no rows; send at least one report")
    if len(texts) > MAX_ROWS_PER_REQUEST:
        raise RequestError(f"the request has {len(texts):,} rows; at most {MAX_ROWS_PER_REQUEST:,} "
                           "per request (split it, or label a file with `radpriv predict`)")
    not_text = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if not_text:
        raise RequestError(f"row(s) {_rows(not_text)}: the report is not a string (missing or "
                           "null text); every row needs the report's text")
    empty = [i for i, t in enumerate(texts) if not t.strip()]
    if empty:
        raise RequestError(f"row(s) {_rows(empty)}: empty report text; every row needs the report's text")
    too_long = [i for i, t in enumerate(texts) if len(t) > MAX_REPORT_CHARS]
    if too_long:
        longest = max(len(texts[i]) for i in too_long)
        raise RequestError(f"row(s) {_rows(too_long)}: report longer than {MAX_REPORT_CHARS:,} characters "
                           f"(the longest has {longest:,}); the model reads only the first "
                           "max_length tokens, so send the report's findings and impression")
    return texts


def check_batch_size(params) -> int:
    """The `batch_size` parameter (default 64): a whole number from 1 to MAX_ROWS_PER_REQUEST."""
    value = (params or {}).get("batch_size", 64)
    try:
        n = int(value)
        ok = n == float(value) and 1 <= n <= MAX_ROWS_PER_REQUEST
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise RequestError(f"params.batch_size must be a whole number from 1 to {MAX_ROWS_PER_REQUEST:,}")
    return n


def _rows(rows: list[int], shown: int = 5) -> str:
    head = ", ".join(str(i) for i in rows[:shown])
    return head + (f" and {len(rows) - shown:,} more" if len(rows) > shown else "")


class RadprivClassifierModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from radpriv.model.bundle import load_bundle

        self.model = load_bundle(context.artifacts["bundle"])

    # A DataFrame hint: MLflow infers no schema from it (the logged signature is the schema)
    # and, unlike no hint at all, does not warn on every import.
    def predict(self, context, model_input: pd.DataFrame, params=None):
        from radpriv.model.bundle import predict_proba

        texts = check_texts(texts_of(model_input))
        probs = predict_proba(self.model, texts, batch_size=check_batch_size(params))
        return pd.DataFrame(probs.numpy(), columns=self.model.label_names)


def _pyfunc_args(bundle_dir, label_names) -> dict:
    """What logging and saving the pyfunc model share: the model, its bundle, signature, example
    and metadata (see log_pyfunc)."""
    import json
    from pathlib import Path

    from mlflow.models import infer_signature

    from radpriv.model.bundle import META

    example = pd.DataFrame({"text": [INPUT_EXAMPLE_TEXT]})
    output = pd.DataFrame([[0.5] * len(label_names)], columns=list(label_names))
    meta = json.loads((Path(bundle_dir) / META).read_text())
    metadata = {"radpriv": {"privacy": meta.get("privacy"), "label_names": list(label_names),
                            "thresholds": meta.get("thresholds")}}
    return {"python_model": RadprivClassifierModel(), "artifacts": {"bundle": str(bundle_dir)},
            "signature": infer_signature(example, output, params={"batch_size": 64}),
            "input_example": example, "pip_requirements": ["radpriv"], "metadata": metadata}


def log_pyfunc(bundle_dir, label_names, name: str = "model"):
    """Log the bundle as a pyfunc model with a signature and a synthetic input example.

    The signature declares the optional `batch_size` parameter (a served model accepts
    `{"inputs": [...], "params": {"batch_size": 16}}`), and the MLmodel file's `metadata`
    carries the bundle's privacy facts and label schema, so they travel with every copy of
    the model (`mlflow.models.get_model_info(uri).metadata`), served ones included.
    """
    return mlflow.pyfunc.log_model(name=name, **_pyfunc_args(bundle_dir, label_names))


def save_pyfunc(bundle_dir, path):
    """The bundle as a pyfunc model folder at `path` (as log_pyfunc logs it), for serving a
    bundle that was never logged."""
    from radpriv.model.bundle import load_meta

    mlflow.pyfunc.save_model(path=str(path), **_pyfunc_args(bundle_dir, load_meta(bundle_dir)["label_names"]))
    return path
