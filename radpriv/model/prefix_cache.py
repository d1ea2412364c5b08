"""Frozen-prefix features: compute the frozen bottom of the encoder once per report, not per epoch.

With LoRA on the top layers only (`finetune.layers_to_transform`, e.g. [3, 4, 5] of MiniLM's
six), the embeddings and every layer below the first adapted one are frozen: their output for a
report is the same at every epoch. Training recomputed it at every step anyway — half of the
forward pass for [3, 4, 5]. Here it is computed once, in eval mode, for every report of every
split, and training runs only the adapted layers on top of it.

Privacy: the cached features are a fixed public function (the pre-trained frozen layers) applied
to each report separately — the same per-report preprocessing as tokenisation. Nothing crosses
reports, so Poisson sampling, clipping and the accountant see exactly what they saw before. The
features live in memory only, never in a file or the tracking store.

Behaviour: identical to the uncached forward in eval mode (tested), with one difference in
training: the frozen layers' dropout is not applied (their features are computed once).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers.masking_utils import create_bidirectional_mask

log = logging.getLogger(__name__)


def base_encoder(encoder: nn.Module) -> nn.Module:
    """The transformers model under a peft wrapper (or the encoder itself)."""
    get_base = getattr(encoder, "get_base_model", None)
    return get_base() if callable(get_base) else encoder


def peft_config(encoder: nn.Module):
    """The LoRA config peft applied (its layers_to_transform is the resolved list), or None."""
    configs = getattr(encoder, "peft_config", None)
    return next(iter(configs.values()), None) if configs else None


def supports_prefix(encoder: nn.Module) -> bool:
    """BERT-style encoders: embeddings, a list of layers, and transformers' own mask builder.

    ALBERT shares one layer's weights across depth, so a frozen prefix of it does not exist.
    """
    base = base_encoder(encoder)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    config = getattr(base, "config", None)
    return (hasattr(base, "embeddings") and isinstance(layers, nn.ModuleList)
            and config is not None and not getattr(config, "is_decoder", False))


def frozen_prefix_layers(encoder: nn.Module, finetune: Mapping) -> int:
    """How many bottom layers can be cached: those below the lowest layer with a trainable weight
    (the first LoRA layer, or a higher one when a warm start freezes the lower adapters), or every
    layer when nothing of the encoder trains (0: none)."""
    if finetune["mode"] != "lora" or not finetune["cache_frozen_prefix"]:
        return 0
    base = base_encoder(encoder)
    trainable = [n for n, p in base.named_parameters() if p.requires_grad]
    if not supports_prefix(encoder):
        if (trainable and peft_config(encoder) is not None
                and getattr(peft_config(encoder), "layers_to_transform", None)):
            log.info("frozen-prefix cache: not available for %s; every step runs the whole encoder",
                     type(base).__name__)
        return 0
    if not trainable:
        return len(base.encoder.layer)  # nothing of the encoder trains (finetune.warm.trainable=head)
    if any(n.startswith("embeddings.") for n in trainable):
        return 0
    return min(_layer_index(n) for n in trainable) if all(_layer_index(n) < 1 << 30 for n in trainable) else 0


def _layer_index(name: str) -> int:
    parts = name.split(".")
    if len(parts) > 2 and parts[0] == "encoder" and parts[1] == "layer" and parts[2].isdigit():
        return int(parts[2])
    return 1 << 30


def _attention_mask(base: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor):
    # transformers' public mask builder, the one BertModel.forward uses for an encoder: it
    # matches the configured attention implementation (eager, sdpa) as the whole-model path does.
    # The model's private _create_attention_masks changed signature within 5.x; this did not.
    return create_bidirectional_mask(config=base.config, inputs_embeds=hidden, attention_mask=attention_mask)


def _run_layers(base: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor,
                start: int, stop: int | None) -> torch.Tensor:
    mask = _attention_mask(base, hidden, attention_mask)
    for layer in base.encoder.layer[start:stop]:
        out = layer(hidden, mask)
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


def prefix_forward(encoder: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   k: int) -> torch.Tensor:
    """Embeddings and layers [0, k): the frozen part."""
    base = base_encoder(encoder)
    hidden = base.embeddings(input_ids=input_ids)
    return _run_layers(base, hidden, attention_mask, 0, k)


def suffix_forward(encoder: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor,
                   k: int) -> torch.Tensor:
    """Layers [k, end) on top of cached prefix features: the part that trains."""
    return _run_layers(base_encoder(encoder), hidden, attention_mask, k, None)


class PrefixCache:
    """Per split, one [length, hidden] tensor per report (padding positions not stored)."""

    def __init__(self, k: int, dtype: torch.dtype = torch.float32):
        self.k = k
        # bf16 under bf16-mixed: half the memory; the layers above compute in bf16 anyway
        self.dtype = dtype
        self.features: dict[str, list[torch.Tensor]] = {}

    def has(self, split: str) -> bool:
        return split in self.features

    @torch.inference_mode()
    def build(self, net: nn.Module, split: str, input_ids: list, batch_size: int = 64,
              pad_id: int = 0, progress: bool = True, device: torch.device | None = None,
              autocast=None) -> None:
        """Features of every report of `split`, computed on `device` (default: the net's) under
        `autocast` (a context manager: the run's precision) and kept there, in `self.dtype`."""
        import contextlib

        from radpriv.data.datamodule import length_sorted_batches, pad_chunk

        was_training = net.training
        net.eval()
        home = next(net.parameters()).device
        device = home if device is None else device
        net.to(device)
        feats: list[torch.Tensor | None] = [None] * len(input_ids)
        batches = length_sorted_batches([len(x) for x in input_ids], batch_size)
        for rows in tqdm(batches, desc=f"frozen layers 0-{self.k - 1} ({split})", leave=False,
                         disable=not progress):
            chunk = pad_chunk([(i, input_ids[i], np.zeros(0, np.float32)) for i in rows], pad_id)
            with autocast or contextlib.nullcontext():
                hidden = prefix_forward(net.encoder, chunk["input_ids"].to(device),
                                        chunk["attention_mask"].to(device), self.k)
            hidden = hidden.to(self.dtype)
            for row, i in enumerate(rows):
                feats[i] = hidden[row, : len(input_ids[i])].clone()
        self.features[split] = feats
        net.to(home)  # Lightning moves the model itself when training starts
        net.train(was_training)

    def gather(self, split: str, index: torch.Tensor, length: int) -> torch.Tensor:
        """The chunk's features, zero-padded to `length` (its attention mask masks the pads)."""
        rows = [self.features[split][int(i)] for i in index]
        out = torch.zeros((len(rows), length, rows[0].shape[-1]), dtype=rows[0].dtype, device=rows[0].device)
        for r, f in enumerate(rows):
            out[r, : f.shape[0]] = f
        return out

    def nbytes(self) -> int:
        return sum(f.numel() * f.element_size() for fs in self.features.values() for f in fs)


def estimated_bytes(input_ids: Mapping[str, list], hidden_size: int,
                    dtype: torch.dtype = torch.float32) -> int:
    size = torch.empty((), dtype=dtype).element_size()
    return size * hidden_size * sum(len(x) for ids in input_ids.values() for x in ids)
