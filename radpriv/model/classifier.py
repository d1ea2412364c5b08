"""The report classifier: an encoder, masked mean pooling, and a linear multi-label head.

Mean pooling rather than the [CLS] pooler: all-MiniLM-L6-v2 was trained for mean pooling,
and on Open-i the same LoRA reached weighted F1 0.841 with mean pooling against 0.707 with
the [CLS] pooler (../shared/DESIGN.md, measured leads).

Fine-tuning modes:
- `lora`: peft LoRA on the named attention projections; everything of the encoder frozen
  except the LoRA matrices; the head trainable.
- `full`: every encoder weight trainable except the embeddings (frozen under both modes:
  their per-sample gradients would be vocabulary-sized, and the paper freezes them too).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from radpriv.errors import ConfigError

FINETUNE_MODES = ("lora", "full")


class ReportClassifier(nn.Module):
    def __init__(self, encoder: nn.Module, num_labels: int, dropout: float = 0.1,
                 bias_init: float = 0.0, normalize_pooled: bool = False):
        super().__init__()
        self.encoder = encoder
        # unit-norm report embeddings (as sentence-transformers serve MiniLM): bounded features,
        # and the head's rows become cosine scores (see head_init.py)
        self.normalize_pooled = bool(normalize_pooled)
        hidden = encoder.config.hidden_size
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, num_labels)
        # Small random weights (BERT's own init scale), zero bias: a zero weight matrix would
        # block every gradient into the LoRA matrices on the first step (lora_B is zero too).
        nn.init.normal_(self.head.weight, std=0.02)
        # A constant prior, not the training labels' prevalence: computing prevalence from the
        # private labels would spend privacy outside DP-SGD. "Most findings are rare" is public.
        nn.init.constant_(self.head.bias, bias_init)

    def forward(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor,
                prefix_hidden: torch.Tensor | None = None, prefix_layers: int = 0) -> torch.Tensor:
        """Label logits from token ids, or from cached outputs of the encoder's first
        `prefix_layers` frozen layers (radpriv.model.prefix_cache)."""
        if prefix_hidden is None:
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        else:
            from radpriv.model.prefix_cache import suffix_forward

            hidden = suffix_forward(self.encoder, prefix_hidden, attention_mask, prefix_layers)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        if self.normalize_pooled:
            pooled = nn.functional.normalize(pooled, dim=-1)
        return self.head(self.dropout(pooled))


def _freeze_embeddings(encoder: nn.Module) -> None:
    emb = getattr(encoder, "embeddings", None)
    if emb is None:
        raise ConfigError(f"{type(encoder).__name__} has no `embeddings` module to freeze")
    for p in emb.parameters():
        p.requires_grad_(False)


def resolve_lora_layers(encoder: nn.Module, layers) -> list[int] | None:
    """`finetune.layers_to_transform`: null (every layer), a list of indices, or `top_half`.

    `top_half` is the recipe's per-family default: the upper half of a BERT-style stack (MiniLM's
    [3, 4, 5], BERT-small's [2, 3], BERT-medium's [4..7]); fewer noisy parameters under DP, and
    the frozen lower half is computed once (prefix_cache.py). ALBERT shares one layer's weights
    across depth, so there is no upper half to pick: every (the one) layer.
    """
    if layers is None or (isinstance(layers, str) and layers == "all"):
        return None
    if isinstance(layers, str):
        if layers != "top_half":
            raise ConfigError(f"finetune.layers_to_transform={layers!r}: expected null, a list of "
                              "layer indices, or top_half")
        stack = getattr(getattr(encoder, "encoder", None), "layer", None)
        if not isinstance(stack, nn.ModuleList):
            return None
        n = len(stack)
        return list(range(n // 2, n)) if n > 1 else None
    return [int(i) for i in layers] or None


def apply_lora(encoder: nn.Module, cfg: Mapping) -> nn.Module:
    """Wrap the encoder with peft LoRA adapters; only the LoRA matrices stay trainable."""
    from peft import LoraConfig, get_peft_model

    targets: Sequence[str] = list(cfg["target_modules"])
    names = {n.rsplit(".", 1)[-1] for n, _ in encoder.named_modules()}
    missing = [t for t in targets if t not in names]
    if missing:
        raise ConfigError(
            f"finetune.target_modules {missing} name no module of {type(encoder).__name__}; "
            f"linear modules it has: {sorted(n for n in names if n)[:20]}"
        )
    layers = resolve_lora_layers(encoder, cfg["layers_to_transform"])
    lora = LoraConfig(
        r=int(cfg["r"]),
        lora_alpha=float(cfg["alpha"]),
        lora_dropout=float(cfg["dropout"]),
        target_modules=targets,
        layers_to_transform=layers,
        bias="none",
    )
    return get_peft_model(encoder, lora)


def build_classifier(encoder: nn.Module, num_labels: int, finetune: Mapping) -> ReportClassifier:
    mode = finetune["mode"]
    if mode not in FINETUNE_MODES:
        raise ConfigError(f"finetune.mode={mode!r}: expected one of {FINETUNE_MODES}")
    if mode == "lora":
        encoder = apply_lora(encoder, finetune)
    else:
        _freeze_embeddings(encoder)
        # the [CLS] pooler is unused (mean pooling): a trainable weight outside the graph would
        # get no per-sample gradient, and Opacus rightly refuses that
        pooler = getattr(encoder, "pooler", None)
        if pooler is not None:
            for p in pooler.parameters():
                p.requires_grad_(False)
    return ReportClassifier(encoder, num_labels, dropout=float(finetune["head_dropout"]),
                            bias_init=float(finetune["head_bias_init"]),
                            normalize_pooled=bool(finetune["normalize_pooled"]))
