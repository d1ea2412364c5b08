"""The tiny DP-SGD rig of the mechanics tests: a tiny random encoder with LoRA, its LoRA state,
a privacy plan, a data module and a CPU Lightning fit; seconds, CPU only."""

from __future__ import annotations

import lightning as L
import torch
from omegaconf import OmegaConf

from radpriv.config import compose
from radpriv.data.datamodule import ReportDataModule
from radpriv.model.classifier import build_classifier
from radpriv.model.encoder import load_encoder, resolve_spec
from radpriv.privacy.callback import PrivacyPlan


def lora_finetune(**settings) -> dict:
    """The `finetune` group of finetune=lora as conf/ composes it, with a test's settings over it."""
    return {**OmegaConf.to_container(compose(["finetune=lora"]).finetune), **settings}


# a small adapter on every layer and a zero head bias: the rig the mechanics tests were written for
LORA = lora_finetune(r=4, alpha=8, head_dropout=0.0, layers_to_transform=None, head_bias_init=0.0)


def tiny_net(name: str, finetune=LORA, num_labels: int = 3, seed: int = 0):
    encoder, tokenizer = load_encoder(resolve_spec(name), seed=seed)
    torch.manual_seed(seed)
    return build_classifier(encoder, num_labels, finetune), tokenizer


def lora_state(net) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in net.named_parameters() if "lora_" in n}


def plan(noise_multiplier: float, max_grad_norm: float, sample_rate: float, batch: int,
         steps: int, target: float = float("inf"), delta: float = 1e-5) -> PrivacyPlan:
    return PrivacyPlan(target_epsilon=target, delta=delta, noise_multiplier=noise_multiplier,
                       max_grad_norm=max_grad_norm, sample_rate=sample_rate, expected_batch_size=batch,
                       planned_steps=steps, accountant="prv")


def fit(module, dm, callbacks, max_steps: int = -1, max_epochs: int = 1) -> L.Trainer:
    trainer = L.Trainer(max_steps=max_steps, max_epochs=max_epochs, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                        accelerator="cpu", callbacks=callbacks)
    trainer.fit(module, datamodule=dm)
    return trainer


def make_dm(table, tok, *, batch, physical, poisson, seed=0):
    dm = ReportDataModule(table, tok, max_length=32, batch_size=batch, physical_batch_size=physical,
                          poisson=poisson, seed=seed)
    dm.setup("fit")
    return dm
