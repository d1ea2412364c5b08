"""The MLflow pyfunc model: a DataFrame of report texts in, label probabilities out.

Input: a DataFrame with a `text` column (or a single column of strings, or a list of
strings). Output: one probability column per label, in the model's label order. The
per-label thresholds travel in the bundle's `radpriv_model.json`.
"""

from __future__ import annotations

import mlflow.pyfunc
import pandas as pd

# A made-up sentence, so that no report text is ever logged as the model's input example.
INPUT_EXAMPLE_TEXT = "synthetic example input for the radpriv schema; not a patient report"



class RadprivClassifierModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from radpriv.model.bundle import load_bundle

        self.model = load_bundle(context.artifacts["bundle"])

    # A DataFrame hint: MLflow infers no schema from it (the logged signature is the schema)
    # and, unlike no hint at all, does not warn on every import.
    def predict(self, context, model_input: pd.DataFrame, params=None):
        from radpriv.model.bundle import predict_proba

        if isinstance(model_input, pd.DataFrame):
            if "text" in model_input.columns:
                texts = model_input["text"].tolist()
            elif model_input.shape[1] == 1:
                texts = model_input.iloc[:, 0].tolist()
            else:
                raise ValueError(f"expected a `text` column; got columns {list(model_input.columns)}")
        else:
            texts = list(model_input)
        probs = predict_proba(self.model, texts, batch_size=int((params or {}).get("batch_size", 64)))
        return pd.DataFrame(probs.numpy(), columns=self.model.label_names)


def log_pyfunc(bundle_dir, label_names, name: str = "model"):
    """Log the bundle as a pyfunc model with a signature and a synthetic input example.

    The signature declares the optional `batch_size` parameter (a served model accepts
    `{"inputs": [...], "params": {"batch_size": 16}}`), and the MLmodel file's `metadata`
    carries the bundle's privacy facts and label schema, so they travel with every copy of
    the model (`mlflow.models.get_model_info(uri).metadata`), served ones included.
    """
    import json
    from pathlib import Path

    from mlflow.models import infer_signature

    from radpriv.model.bundle import META

    example = pd.DataFrame({"text": [INPUT_EXAMPLE_TEXT]})
    output = pd.DataFrame([[0.5] * len(label_names)], columns=list(label_names))
    meta = json.loads((Path(bundle_dir) / META).read_text())
    metadata = {"radpriv": {"privacy": meta.get("privacy"), "label_names": list(label_names),
                            "thresholds": meta.get("thresholds")}}
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=RadprivClassifierModel(),
        artifacts={"bundle": str(bundle_dir)},
        signature=infer_signature(example, output, params={"batch_size": 64}),
        input_example=example,
        pip_requirements=["radpriv"],
        metadata=metadata,
    )
