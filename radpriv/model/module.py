"""The LightningModule: one loss for every stage, metrics per stage, steps over logical batches.

Optimisation is manual because one optimisation step covers one *logical* batch (a Poisson
draw under DP) that arrives as several physical chunks. How a step turns chunk losses into a
parameter update is delegated to `self.step_runner`: `PlainStep` here; the DP callback
swaps in `radpriv.privacy.dp_step.DPStep` (per-sample clipping and noise). The module itself
never touches privacy machinery.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from radpriv.errors import ConfigError
from radpriv.model.metrics import MASKED, classification_metrics, fit_thresholds


def per_sample_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits averaged over each report's known labels: one loss per report.

    Per-report (not per-batch) normalisation keeps every report's gradient on the same
    scale whatever the batch, which is what per-sample clipping bounds.
    """
    logits = logits.float()  # under bf16 autocast the head's output is bf16: the loss is fp32
    known = (labels != MASKED).to(logits.dtype)
    target = labels.clamp(min=0)
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none") * known
    return loss.sum(1) / known.sum(1).clamp(min=1.0)


class PlainStep:
    """Non-private step: mean loss over the logical batch, one optimiser update."""

    def __call__(self, module: ReportClassifierModule, optimizer, batch) -> float:
        total = 0.0
        for chunk in batch.chunks:
            losses = module.chunk_losses(chunk)
            module.manual_backward(losses.sum() / batch.size)
            total += float(losses.detach().sum())
        optimizer.step()
        optimizer.zero_grad()
        return total


class ReportClassifierModule(L.LightningModule):
    def __init__(self, net: nn.Module, label_names: Sequence[str], *, lr: float,
                 weight_decay: float = 0.0, warmup_ratio: float = 0.0, total_steps: int = 1,
                 schedule: str = "linear", optimizer: str = "adamw", head_lr_multiplier: float = 1.0,
                 log_train_loss: bool = True, log_validation_metrics: bool = True):
        super().__init__()
        self.save_hyperparameters(ignore=["net"], logger=False)
        self.automatic_optimization = False
        # Checkpoints hold trainable weights only (see on_save_checkpoint): allow the frozen
        # encoder weights to be missing when loading.
        self.strict_loading = False
        self.net = net
        self.label_names = tuple(label_names)
        self.register_buffer("thresholds", torch.full((len(label_names),), 0.5))
        self.step_runner = PlainStep()
        # cached outputs of the frozen bottom layers (radpriv.model.prefix_cache); None: off
        self.prefix_cache = None
        self._outputs: dict[str, list] = {"val": [], "test": []}

    # -- shared by every stage --
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.net(input_ids, attention_mask)

    def logits(self, batch, split: str) -> torch.Tensor:
        cache = self.prefix_cache
        if cache is not None and cache.has(split):
            mask = batch["attention_mask"]
            feats = cache.gather(split, batch["index"], mask.shape[1]).to(mask.device)
            return self.net(None, mask, prefix_hidden=feats, prefix_layers=cache.k)
        return self(batch["input_ids"], batch["attention_mask"])

    def chunk_losses(self, chunk) -> torch.Tensor:
        return per_sample_loss(self.logits(chunk, "train"), chunk["labels"])

    # -- training --
    def configure_optimizers(self):
        head = [p for p in self.net.head.parameters() if p.requires_grad]
        body = [p for n, p in self.net.named_parameters() if p.requires_grad and not n.startswith("head.")]
        lr = self.hparams.lr
        params = [{"params": body, "lr": lr},
                  {"params": head, "lr": lr * self.hparams.head_lr_multiplier}]
        params = [g for g in params if g["params"]]
        if self.hparams.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=lr, weight_decay=self.hparams.weight_decay)
        elif self.hparams.optimizer == "adamw":
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=self.hparams.weight_decay)
        else:
            raise ConfigError(f"finetune.optimizer={self.hparams.optimizer!r}: expected adamw or sgd")
        total = max(1, int(self.hparams.total_steps))
        warmup = int(round(self.hparams.warmup_ratio * total))

        def factor(step: int) -> float:
            if warmup and step < warmup:
                return (step + 1) / warmup
            if self.hparams.schedule == "constant":
                return 1.0
            return max(0.0, (total - step) / max(1, total - warmup))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_train_epoch_start(self) -> None:
        # `from_pretrained` returns encoders in eval mode and Lightning keeps each module's
        # mode: set train mode explicitly, or Opacus' hooks (which record only modules in
        # training mode) and dropout would silently depend on how the encoder was loaded.
        self.net.train()

    def training_step(self, batch, batch_idx: int):
        loss_sum = self.step_runner(self, self.optimizers(), batch)
        self.lr_schedulers().step()
        if self.hparams.log_train_loss and batch.size:
            self.log("train/loss", loss_sum / batch.size, batch_size=batch.size, prog_bar=True)

    # -- evaluation --
    def _eval_step(self, stage: str, batch) -> None:
        # fp32 before the sigmoid: bf16 probabilities would carry 8 significant bits into the
        # thresholds and the metrics, and differ from the logged model's (bundle.predict_proba)
        probs = torch.sigmoid(self.logits(batch, stage).float())
        self._outputs[stage].append((batch["index"].cpu(), probs.detach().float().cpu(),
                                     batch["labels"].cpu()))

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step("test", batch)

    def collected(self, stage: str):
        """(index, probs, labels) of the last epoch of a stage, in dataset order."""
        outs = self._outputs[stage]
        idx = torch.cat([o[0] for o in outs])
        order = torch.argsort(idx)
        return idx[order], torch.cat([o[1] for o in outs])[order], torch.cat([o[2] for o in outs])[order]

    def on_validation_epoch_start(self) -> None:
        self._outputs["val"] = []

    def on_test_epoch_start(self) -> None:
        self._outputs["test"] = []

    def on_validation_epoch_end(self) -> None:
        # trainer.thresholds=dp: the validation reports may reach nothing published but the DP
        # thresholds, so no val/* metric is logged
        if not self._outputs["val"] or self.trainer.sanity_checking or not self.hparams.log_validation_metrics:
            return
        _, probs, labels = self.collected("val")
        at_half = classification_metrics(probs, labels, 0.5, self.label_names)
        tuned = fit_thresholds(probs.numpy(), labels.numpy())
        at_tuned = classification_metrics(probs, labels, tuned, self.label_names)
        self.log_dict({
            "val/f1_weighted": at_tuned["f1_weighted"],
            "val/f1_weighted_at_0.5": at_half["f1_weighted"],
            "val/f1_macro": at_tuned["f1_macro"],
            "val/auroc_macro": at_tuned["auroc_macro"],
        }, prog_bar=False)

    def on_test_epoch_end(self) -> None:
        _, probs, labels = self.collected("test")
        metrics = classification_metrics(probs, labels, self.thresholds.cpu(), self.label_names)
        self.log_dict({f"test/{k}": v for k, v in metrics.items()})

    def set_thresholds_from_validation(self, choose=fit_thresholds) -> np.ndarray:
        """Fit per-label thresholds on the last validation pass and keep them with the model.

        `choose(probs, labels) -> thresholds`: F1-optimal (default) or a DP mechanism's choice.
        """
        _, probs, labels = self.collected("val")
        thr = choose(probs.numpy(), labels.numpy())
        self.thresholds.copy_(torch.as_tensor(thr, dtype=self.thresholds.dtype))
        return thr

    # -- checkpoints: trainable weights and buffers only; the frozen encoder is rebuilt --
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        trainable = {f"net.{n}" for n, p in self.net.named_parameters() if p.requires_grad}
        frozen = {f"net.{n}" for n, p in self.net.named_parameters() if not p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items()
                                    if k in trainable or k not in frozen}
