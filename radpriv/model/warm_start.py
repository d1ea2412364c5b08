"""Public warm start: begin (DP-)training from a model trained on *public* reports.

`finetune.init_from=<run id | runs:/… | models:/… | bundle dir>` loads that model's trainable
weights — the LoRA matrices (or, for `finetune=full`, the encoder) and the classifier head —
into the freshly built classifier before training (`init_from=public` first finds or trains the
public model of the run's label schema: public_start.py). Head rows are matched by label name: a
label the source lacks keeps its fresh row, and the run records which. Decision thresholds are
not taken over: they are fitted again on this run's validation split (or the public one). The
reference is resolved to a local bundle folder by the caller (radpriv/tracking/model_ref.py):
this module reads that folder and never talks to MLflow.

Privacy: the starting point is an input of the training algorithm that does not depend on this
run's private reports, so DP-SGD's guarantee for them is unchanged and the warm start costs
them nothing — *provided the source model never saw them*. radpriv cannot see inside the
source's training data, so it checks what it can and records the rest on the run:
- a source trained on exactly this run's training split is refused (its weights are a function
  of the private reports: a non-private source would void the guarantee, a private one would
  add its ε);
- a source trained on the same dataset but another selection of reports (e.g. the other half
  in the public/private simulation) is accepted with a warning: the user asserts the two are
  disjoint;
- the source's dataset, its privacy facts and the reference are written to privacy.json.
See docs/PRIVACY.md, "Public warm start".
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from radpriv.errors import ConfigError, ModelError, PrivacyError
from radpriv.model.bundle import HEAD, load_meta
from radpriv.model.classifier import ReportClassifier
from radpriv.model.encoder import EncoderSpec

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class WarmStart:
    """What the run records about its starting point (privacy.json `warm_start`)."""

    source: str
    source_dataset: str | None
    source_private: bool | None
    source_epsilon: float | None
    same_dataset_other_reports: bool
    labels_from_source: tuple[str, ...] = ()
    labels_fresh: tuple[str, ...] = ()  # labels the source lacks: their head rows start fresh
    public: dict | None = None  # init_from=public: the corpus, the overlap guard's counts
    privacy_cost: str = ("none to this run's training reports: the source model was trained on "
                         "other (public) reports; its own guarantee, if any, is the source's")

    def as_dict(self) -> dict:
        return asdict(self)


def _check_compatible(meta: Mapping, label_names, spec: EncoderSpec, mode: str, ref: str) -> None:
    if not set(meta["label_names"]) & set(label_names):
        raise ModelError(f"finetune.init_from={ref}: its labels {meta['label_names']} share no name with "
                         f"this run's {list(label_names)}; warm-start from a model of the same label schema")
    if meta["encoder"]["name"] != spec.name:
        raise ModelError(f"finetune.init_from={ref}: it was trained on encoder {meta['encoder']['name']!r}, "
                         f"this run uses {spec.name!r}")
    if meta["finetune_mode"] != mode:
        raise ModelError(f"finetune.init_from={ref}: a {meta['finetune_mode']} model cannot start a "
                         f"finetune={mode} run")


def _check_source_data(meta: Mapping, dataset: str, train_fingerprints: tuple[str, str], ref: str,
                       verified_disjoint: bool = False) -> bool:
    """Refuse a source trained on this run's training reports; True: same dataset, other reports.

    `train_fingerprints`: this run's training split as (keyed digest, plain content hash). A
    bundle records the keyed digest (`train_digest`, under the private folder's secret: the same
    machine or a copy of its key recognises it); bundles made before it was keyed recorded the
    plain hash (`train_fingerprint`).
    """
    source = meta.get("train_data") or {}
    digest, fingerprint = train_fingerprints
    if source.get("train_digest") == digest or source.get("train_fingerprint") == fingerprint:
        raise PrivacyError(
            f"finetune.init_from={ref} was trained on this run's own training reports: starting from "
            "it would spend their privacy outside this run's accounting. Warm-start from a model "
            "trained on public reports (e.g. another dataset, or data.train_shard=0/2 vs 1/2)")
    same = source.get("dataset") == dataset
    if same and not verified_disjoint:
        log.warning("warm start: %s was trained on other reports of %s; their being disjoint from "
                    "this run's training reports is what makes the warm start free", ref, dataset)
    return same


def _load_lora(net: ReportClassifier, adapter_dir: Path, ref: str) -> None:
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    files = sorted(adapter_dir.glob("adapter_model.safetensors"))
    if not files:
        raise ModelError(f"finetune.init_from={ref}: no adapter weights in {adapter_dir}")
    saved = load_file(str(files[0]))
    expected = get_peft_model_state_dict(net.encoder)
    if set(saved) != set(expected) or any(saved[k].shape != expected[k].shape for k in saved):
        config_file = adapter_dir / "adapter_config.json"
        cfg = config_file.read_text() if config_file.is_file() else ""
        hint = re.findall(r'"(r|target_modules|layers_to_transform)": ([^,\n]+(?:\][^,\n]*)?)', cfg)
        raise ConfigError(f"finetune.init_from={ref}: its LoRA adapter ({', '.join(f'{k}={v}' for k, v in hint)}) "
                          "does not match this run's finetune.r / target_modules / layers_to_transform; "
                          "set them to the source's")
    set_peft_model_state_dict(net.encoder, saved)


def _load_full(net: ReportClassifier, encoder_dir: Path, ref: str) -> None:
    files = sorted(encoder_dir.glob("*.safetensors"))
    if not files:
        raise ModelError(f"finetune.init_from={ref}: no encoder weights in {encoder_dir}")
    state = {}
    for f in files:
        state.update(load_file(str(f)))
    missing, unexpected = net.encoder.load_state_dict(state, strict=False)
    if unexpected or len(missing) == len(net.encoder.state_dict()):
        raise ModelError(f"finetune.init_from={ref}: its encoder weights do not fit this encoder")


def apply_warm_start(net: ReportClassifier, bundle: Path, ref: str, *, label_names, spec: EncoderSpec,
                     mode: str, dataset: str, train_fingerprints: tuple[str, str],
                     verified_disjoint: bool = False) -> WarmStart:
    """Load the source's trainable weights into `net` (in place) and say where they came from.

    `bundle`: the source's bundle folder, already resolved from `ref` (the reference as written,
    for errors and the record: radpriv.tracking.model_ref.local_bundle).
    `verified_disjoint`: the overlap guard has checked the source's reports against this run's
    training reports (init_from=public), so a same-dataset source needs no warning."""
    bundle = Path(bundle)
    meta = load_meta(bundle)
    _check_compatible(meta, label_names, spec, mode, ref)
    same_dataset = _check_source_data(meta, dataset, train_fingerprints, ref, verified_disjoint)
    if mode == "lora":
        _load_lora(net, bundle / "adapter", ref)
    else:
        _load_full(net, bundle / "encoder", ref)
    shared = _load_head_by_name(net, load_file(str(bundle / HEAD)), list(meta["label_names"]), label_names)
    fresh = tuple(n for n in label_names if n not in shared)
    if fresh:
        log.warning("warm start: %d of %d labels are not in %s and start fresh: %s", len(fresh),
                    len(label_names), ref, ", ".join(fresh))
    privacy = meta.get("privacy") or {}
    log.info("warm start: trainable weights from %s (trained on %s, %s)", ref,
             privacy.get("dataset", "an unrecorded dataset"),
             f"ε={privacy['epsilon']:.3g}" if privacy.get("private") else "non-private")
    return WarmStart(source=str(ref), source_dataset=privacy.get("dataset"),
                     source_private=privacy.get("private"), source_epsilon=privacy.get("epsilon"),
                     same_dataset_other_reports=same_dataset, labels_from_source=shared,
                     labels_fresh=fresh)


def _load_head_by_name(net: ReportClassifier, state: Mapping, source_labels: list, label_names) -> tuple[str, ...]:
    """Copy the source head's row (weight and bias) of every label this run shares, by name."""
    shared = tuple(n for n in label_names if n in source_labels)
    with torch.no_grad():
        for name in shared:
            j, i = list(label_names).index(name), source_labels.index(name)
            net.head.weight[j].copy_(state["weight"][i])
            net.head.bias[j].copy_(state["bias"][i])
    return shared
