"""The run's Description in the MLflow UI (the `mlflow.note.content` tag): the guarantee first,
then what was trained on what, the key metrics and where the model is.

Built only from privacy.json, the config and the test metrics, all of which the run already
publishes (radpriv/tracking/release.py): the note adds no new fact about the reports.
"""

from __future__ import annotations

from collections.abc import Mapping

NOTE_TAG = "mlflow.note.content"
_UNUSED = {"validation": "validation split", "test": "test split"}


def guarantee_lines(privacy: Mapping) -> list[str]:
    """The privacy statement in plain words, one line per record set."""
    if not privacy.get("private"):
        lines = ["**No differential-privacy guarantee**: this model was trained without DP. Do not "
                 "release it outside the environment that may hold the training reports."]
    else:
        lines = [f"{privacy['guarantee']}.",
                 f"ε = {privacy['epsilon']:.4g}, δ = {privacy['delta']:.3g}, unit: {privacy['unit']}, "
                 f"adjacency: {privacy['adjacency'].replace('_', '-')}."]
    for key, what in _UNUSED.items():
        use = privacy.get("record_sets", {}).get(key, {})
        if use:
            lines.append(f"- {what}: {use.get('use', 'used')}. Guarantee: {use.get('guarantee', 'none')}.")
    teacher = privacy.get("teacher")
    if teacher:
        lines.append(f"- training labels from a teacher: {teacher.get('guarantee', teacher)}.")
    return lines


def run_note(privacy: Mapping, cfg: Mapping, metrics: Mapping, registered_as: str | None = None) -> str:
    """The markdown of the Description."""
    lines = ["### Privacy", *guarantee_lines(privacy), "", "### What was trained",
             f"- model: `{cfg['model'].get('name') or 'custom'}` ({cfg['model'].get('source')}), "
             f"fine-tuning: {cfg['finetune'].get('mode')}",
             f"- data: `{cfg['data']['name']}`, {privacy.get('n_train', privacy.get('n_train_patients'))} "
             f"training {'patients' if privacy.get('unit') == 'patient' else 'reports'} "
             "(a public fact of the run)",
             f"- seed {cfg.get('seed')}, {cfg['trainer'].get('max_epochs')} epochs, precision "
             f"{cfg['trainer'].get('precision')}", "", "### Test metrics"]
    for key, label in (("test/f1_weighted", "weighted F1"), ("test/f1_macro", "macro F1"),
                       ("test/auroc_macro", "macro AUROC")):
        if key in metrics:
            lines.append(f"- {label}: {float(metrics[key]):.3f}")
    lines += ["", "### Where the model is",
              "- this run's artifact `model` (MLflow pyfunc) and `adapter/`; `privacy.json` holds the full "
              "statement"]
    if registered_as:
        lines.append(f"- registered model `{registered_as}` (its card: `MODEL_CARD.md`)")
    return "\n".join(lines) + "\n"


def set_run_note(client, run_id: str, note: str) -> None:
    client.set_tag(run_id, NOTE_TAG, note)
