"""A trained classifier on disk: enough to rebuild it anywhere radpriv is installed.

Layout of a bundle folder:
    radpriv_model.json      encoder spec, fine-tuning mode, label names, thresholds, max_length
    tokenizer/              the tokenizer's own files
    adapter/                LoRA only: peft `save_pretrained` output (+ classifier_head.safetensors)
    encoder/                full fine-tuning, or a base encoder that cannot be rebuilt by name
                            (tiny random encoders): `save_pretrained` of the encoder
    classifier_head.safetensors

The paper's encoders and MiniLM are rebuilt by name, so a bundle of a LoRA run weighs a few
hundred kilobytes rather than the encoder's tens of megabytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from radpriv.errors import ModelError
from radpriv.model.classifier import ReportClassifier
from radpriv.model.encoder import EncoderSpec, load_encoder, resolve_spec

META = "radpriv_model.json"
HEAD = "classifier_head.safetensors"
FORMAT_VERSION = 1


@dataclass
class LoadedModel:
    net: ReportClassifier
    tokenizer: object
    meta: dict
    # inference precision (radpriv/model/precision.py): 32-true or bf16-mixed
    precision: str = "32-true"

    @property
    def label_names(self) -> list[str]:
        return list(self.meta["label_names"])

    @property
    def thresholds(self) -> list[float]:
        return list(self.meta["thresholds"])


def _head_state(net: ReportClassifier) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in net.head.state_dict().items()}


def _save_base_without_lora(peft_encoder, path: Path) -> None:
    """The frozen base encoder as `from_pretrained` expects it: peft's injected LoRA layers removed."""
    base = peft_encoder.get_base_model()
    state = {k.replace(".base_layer.", "."): v.detach().cpu().contiguous()
             for k, v in base.state_dict().items() if "lora_" not in k}
    path.mkdir(parents=True, exist_ok=True)
    base.config.save_pretrained(path)
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})


def save_bundle(path: Path, net: ReportClassifier, tokenizer, spec: EncoderSpec, *,
                finetune_mode: str, label_names, thresholds, max_length: int,
                extra: dict | None = None) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(path / "tokenizer")
    save_file(_head_state(net), str(path / HEAD))
    encoder = net.encoder
    base_saved = False
    if finetune_mode == "lora":
        encoder.save_pretrained(path / "adapter")
        save_file(_head_state(net), str(path / "adapter" / HEAD))
        if not spec.reloadable_by_name:
            _save_base_without_lora(encoder, path / "encoder")
            base_saved = True
    else:
        encoder.save_pretrained(path / "encoder")
        base_saved = True
    meta = {
        "format_version": FORMAT_VERSION,
        "encoder": {"name": spec.name, "kind": spec.kind, "location": spec.location},
        "base_saved": base_saved,
        "finetune_mode": finetune_mode,
        "label_names": list(label_names),
        "thresholds": [float(t) for t in thresholds],
        "max_length": int(max_length),
        "hidden_size": int(net.head.in_features),
        "normalize_pooled": bool(getattr(net, "normalize_pooled", False)),
        **(extra or {}),
    }
    (path / META).write_text(json.dumps(meta, indent=2))
    return path


def load_meta(path: Path) -> dict:
    """The bundle's radpriv_model.json (labels, thresholds, encoder, privacy facts)."""
    meta_file = Path(path) / META
    if not meta_file.is_file():
        raise ModelError(f"{path} is not a radpriv model folder (no {META} in it)")
    return json.loads(meta_file.read_text())


def load_bundle(path: Path, precision: str | None = None) -> LoadedModel:
    """`precision`: auto | 32-true | bf16-mixed; None: $RADPRIV_PRECISION, else auto (bf16 where
    this CPU computes it natively). Inference runs on CPU."""
    import os

    from peft import PeftModel
    from transformers import AutoModel, AutoTokenizer

    from radpriv.model.precision import resolve_precision

    chosen = resolve_precision(precision or os.environ.get("RADPRIV_PRECISION") or "auto", "cpu")
    path = Path(path)
    meta = load_meta(path)
    tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer")
    if meta["base_saved"]:
        base = AutoModel.from_pretrained(path / "encoder")
    else:
        spec = EncoderSpec(**meta["encoder"])
        if spec.kind != "dir" or not Path(spec.location).exists():
            # rebuilt by name on this machine (e.g. minilm from this machine's site-packages)
            spec = resolve_spec(spec.name)
        base, _ = load_encoder(spec)
    if meta["finetune_mode"] == "lora":
        encoder = PeftModel.from_pretrained(base, path / "adapter")
    else:
        encoder = base
    net = ReportClassifier(encoder, len(meta["label_names"]), dropout=0.0,
                           normalize_pooled=bool(meta.get("normalize_pooled", False)))
    net.head.load_state_dict(load_file(str(path / HEAD)))
    net.eval()
    return LoadedModel(net=net, tokenizer=tokenizer, meta=meta, precision=chosen)


@torch.no_grad()
def predict_proba(model: LoadedModel, texts, batch_size: int = 64) -> torch.Tensor:
    """Label probabilities for raw texts, in input order (batches sorted by length inside)."""
    import numpy as np

    from radpriv.data.datamodule import length_sorted_batches, pad_chunk
    from radpriv.data.tokens import tokenize_texts
    from radpriv.model.precision import autocast

    texts = ["" if t is None else str(t) for t in texts]
    ids = tokenize_texts(texts, model.tokenizer, int(model.meta["max_length"]))
    out = torch.zeros((len(texts), len(model.meta["label_names"])))
    pad = int(model.tokenizer.pad_token_id or 0)
    dummy = np.zeros(len(model.meta["label_names"]), dtype=np.float32)
    model.net.eval()
    for batch in length_sorted_batches([len(x) for x in ids], batch_size):
        chunk = pad_chunk([(i, ids[i], dummy) for i in batch], pad)
        with autocast(model.precision, "cpu"):
            logits = model.net(chunk["input_ids"], chunk["attention_mask"])
        out[chunk["index"]] = torch.sigmoid(logits.float())
    return out
