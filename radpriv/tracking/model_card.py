"""The model card of a registered model version: `MODEL_CARD.md` beside the run's model, and the
same text as the version's description in the registry.

Made from what the run already publishes (privacy.json's facts, the label schema, the test
metrics and their confidence intervals where a sweep logged them), so the card releases
nothing new about the training reports.
"""

from __future__ import annotations

from collections.abc import Mapping

CARD_ARTIFACT = "MODEL_CARD.md"
_METRICS = (("test/f1_weighted", "weighted F1"), ("test/f1_macro", "macro F1"),
            ("test/f1_micro", "micro F1"), ("test/auroc_macro", "macro AUROC"))


def _metric_line(key: str, label: str, metrics: Mapping) -> str | None:
    if key not in metrics:
        return None
    line = f"- {label}: {float(metrics[key]):.3f}"
    low, high = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
    if low is not None and high is not None:
        line += f" (95% CI {float(low):.3f}–{float(high):.3f})"
    return line


def model_card(name: str, version: str, run_id: str, facts: Mapping, metrics: Mapping, statement: str) -> str:
    """The card's markdown. `statement`: the one-line privacy description (registry.describe_facts)."""
    labels = list(facts.get("labels") or [])
    dataset = facts.get("dataset") or "unknown"
    private = facts.get("private") is not False and facts.get("epsilon") is not None
    lines = [f"# {name} version {version}", "",
             "## Privacy", statement + ".",
             ("Trained with differentially private LoRA (DP-SGD, Opacus): the guarantee covers the "
              "weights and everything computed from them; the validation and test reports are covered "
              "only where stated." if private else
              "**Not differentially private.** Keep it where the training reports may be."), "",
             "## Intended use",
             "Research on multi-label classification of radiology report text (English, free text "
             "of findings and impression) into the labels below. Not a medical device: not for "
             "diagnosis or triage without validation on the deploying site's reports.", "",
             "## Data", f"Trained on `{dataset}` (radpriv run `{run_id}`).", "",
             f"## Labels ({len(labels)})", ", ".join(labels) or "not recorded", "",
             "## Test metrics (this run's test split)"]
    metric_lines = [m for m in (_metric_line(k, label, metrics) for k, label in _METRICS) if m]
    lines += metric_lines or ["not recorded"]
    lines += ["", "## Limitations",
              f"- Validated only on the test split of `{dataset}`; not validated on other hospitals, "
              "scanners' report styles, languages or on report types other than those it was trained on.",
              "- Labels of the training data come from automatic labelers or MeSH mappings and carry "
              "their errors; rare labels have few examples and low F1.",
              "- A DP guarantee bounds what the model reveals about any one training report (or patient); "
              "it does not make the predictions correct or fair."]
    return "\n".join(lines) + "\n"


def attach_card(client, name: str, version: str, run_id: str, facts: Mapping, statement: str) -> str:
    """Write the card beside the run's model and as the version's registry description."""
    metrics = client.get_run(run_id).data.metrics
    card = model_card(name, version, run_id, facts, metrics, statement)
    client.log_text(run_id, card, CARD_ARTIFACT)
    client.update_model_version(name, version, description=card)
    return card
