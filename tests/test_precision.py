"""bf16 mixed precision: what it resolves to, and that DP-SGD stays exact under it.

The privacy claims are checked under `torch.autocast(bf16)` exactly as Lightning's bf16-mixed
runs the training step: per-sample gradients, their norms, the clipped sum and the noise are
fp32; one report's clipped update never exceeds C; the noise has the planned std.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch

from radpriv.config import compose
from radpriv.data.datamodule import LogicalBatch, ReportDataModule, pad_chunk
from radpriv.data.tokens import tokenize_texts
from radpriv.errors import ConfigError
from radpriv.model import precision
from radpriv.model.classifier import build_classifier
from radpriv.model.encoder import load_encoder, resolve_spec
from radpriv.model.module import ReportClassifierModule
from radpriv.privacy.callback import DPCallback, PrivacyPlan
from radpriv.privacy.dp_step import DPStep, NoisyDPOptimizer
from radpriv.privacy.fp32_grad_sample import Fp32GradSampleHooks
from radpriv.privacy.randomness import PrivateRandomness
from tests.helpers.dp import LORA
from tests.synthetic import synthetic_table

BF16 = torch.bfloat16


def tiny(seed: int = 0):
    encoder, tok = load_encoder(resolve_spec("tiny_bert"), seed=seed)
    torch.manual_seed(seed)
    net = build_classifier(encoder, 3, LORA)
    for n, p in net.named_parameters():  # non-zero lora_B: every LoRA matrix has a gradient
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.2)
    return net, tok


# -- what `auto` resolves to ------------------------------------------------------------------

def test_auto_is_bf16_only_where_it_is_native(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert precision.resolve_precision("auto", "cpu") == precision.BF16
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert precision.resolve_precision("auto", "cpu") == precision.FP32
    assert precision.resolve_precision("bf16-mixed", "cpu") == precision.BF16  # asked for: kept
    assert "NOT native" in precision.why(precision.BF16, "cpu")
    with pytest.raises(ConfigError, match="trainer.precision='16-mixed'"):
        precision.resolve_precision("16-mixed", "cpu")


def test_compose_resolves_precision_and_fp32_keeps_the_run_keys_of_earlier_runs(monkeypatch, tmp_path):
    from omegaconf import OmegaConf

    from radpriv.tracking.release import PrivateFolder
    from radpriv.tracking.resume import run_key

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert compose(["trainer.accelerator=cpu"]).trainer.precision == "bf16-mixed"
    fp32 = compose(["trainer.accelerator=cpu", "trainer.precision=32-true"])
    assert fp32.trainer.precision == "32-true"
    folder = PrivateFolder(tmp_path)
    before = OmegaConf.create(OmegaConf.to_container(fp32))
    for key in ("precision", "num_workers", "pin_memory"):  # what a run before these keys had
        del before.trainer[key]
    del before.finetune["prefix_cache_dtype"]
    assert run_key(fp32, "data", folder) == run_key(before, "data", folder)
    bf16 = compose(["trainer.accelerator=cpu", "trainer.precision=bf16-mixed"])
    assert run_key(bf16, "data", folder) != run_key(fp32, "data", folder)


def test_loader_settings():
    assert precision.loader_settings({"num_workers": "auto", "pin_memory": "auto"}, "cuda") == (4, True)
    assert precision.loader_settings(compose([]).trainer, "cpu") == (0, False)  # conf/: auto
    assert precision.loader_settings({"num_workers": 2, "pin_memory": True}, "cpu") == (2, True)
    with pytest.raises(ConfigError, match="num_workers"):
        precision.loader_settings({"num_workers": -1, "pin_memory": "auto"}, "cpu")


# -- DP-SGD under bf16 ------------------------------------------------------------------------

def _single_report_steps(net, tok, *, sigma: float, clip: float, b: int, steps: int, dtype_seen: list,
                         reports_per_step: int = 1):
    """Run DPStep under bf16 autocast, one or more reports per step; returns the updates."""
    table = synthetic_table(16)
    ids = tokenize_texts(table.texts, tok, 32)
    params = [p for p in net.parameters() if p.requires_grad]
    hooks = Fp32GradSampleHooks(net, batch_first=True, loss_reduction="sum")
    opt = NoisyDPOptimizer(torch.optim.SGD(params, lr=1.0), randomness=PrivateRandomness(False),
                           noise_multiplier=sigma, max_grad_norm=clip, expected_batch_size=b)
    real_clip = opt.clip_and_accumulate

    def spy():
        dtype_seen.extend(p.grad_sample.dtype for p in opt.params)
        real_clip()
        dtype_seen.extend(p.summed_grad.dtype for p in opt.params)

    opt.clip_and_accumulate = spy
    real_noise = opt.randomness.gaussian_like

    def noise_spy(reference, std):
        out = real_noise(reference, std)
        dtype_seen.append(out.dtype)
        return out

    opt.randomness.gaussian_like = noise_spy
    from radpriv.model.module import per_sample_loss
    from radpriv.privacy.dp_step import without_lightning

    activations = []
    probe = net.head.register_forward_hook(lambda m, i, o: activations.append(o.dtype))
    module, wrapped = without_lightning(
        lambda c: per_sample_loss(net(c["input_ids"], c["attention_mask"]), c["labels"]), opt)
    updates = []
    for s in range(steps):
        before = torch.cat([p.detach().flatten().clone() for p in params])
        rows = [(s * reports_per_step + j) % len(ids) for j in range(reports_per_step)]
        batch = LogicalBatch(chunks=[pad_chunk([(i, ids[i], table.labels[i]) for i in rows], 0)],
                             size=len(rows))
        with torch.autocast("cpu", dtype=BF16):  # what Lightning's bf16-mixed wraps the step in
            DPStep()(module, wrapped, batch)
        updates.append(before - torch.cat([p.detach().flatten() for p in params]))
    hooks.cleanup()
    probe.remove()
    assert activations and set(activations) == {BF16}, "the forward pass did not run in bf16"
    return torch.stack(updates)


def test_bf16_per_sample_gradients_norms_sums_and_noise_are_fp32():
    net, tok = tiny()
    seen: list = []
    _single_report_steps(net, tok, sigma=1.0, clip=1.0, b=2, steps=2, dtype_seen=seen, reports_per_step=2)
    assert seen and set(seen) == {torch.float32}
    assert all(p.dtype == torch.float32 for p in net.parameters())


def test_bf16_clipping_bound_holds_for_every_report():
    """One report per step, no noise, b = 1, lr = 1: the update IS the clipped gradient, whose
    norm must be ≤ C. With bf16 per-sample norms it overshoots C by ~1e-3 of C."""
    net, tok = tiny()
    clip = 1e-3
    updates = _single_report_steps(net, tok, sigma=0.0, clip=clip, b=1, steps=12, dtype_seen=[])
    norms = updates.double().norm(dim=1)
    assert (norms > 0.99 * clip).all(), "clipping should bind with C this small"
    assert float(norms.max()) <= clip * (1 + 1e-5)


def test_bf16_noise_has_the_planned_std():
    net, tok = tiny()
    sigma, clip, b = 2.0, 1e-3, 4
    updates = _single_report_steps(net, tok, sigma=sigma, clip=clip, b=b, steps=30, dtype_seen=[])
    assert abs(float(updates.std()) / (sigma * clip / b) - 1) < 0.05


def test_lightning_bf16_mixed_dp_fit_trains_lora_and_keeps_privacy_in_fp32():
    net, tok = tiny()
    table = synthetic_table(48)
    dm = ReportDataModule(table, tok, max_length=32, batch_size=8, physical_batch_size=4, poisson=True)
    dm.setup("fit")
    module = ReportClassifierModule(net, table.label_names, lr=0.05, total_steps=4, schedule="constant")
    plan = PrivacyPlan(target_epsilon=float("inf"), delta=1e-5, noise_multiplier=1.0, max_grad_norm=1.0,
                       sample_rate=dm.sample_rate, expected_batch_size=8, planned_steps=4, accountant="prv")
    callback = DPCallback(plan)
    seen = []
    real_add_noise = NoisyDPOptimizer.add_noise

    def add_noise(self):
        seen.extend((p.summed_grad.dtype, torch.is_autocast_enabled("cpu")) for p in self.params)
        real_add_noise(self)

    before = {n: p.detach().clone() for n, p in net.named_parameters() if "lora_" in n}
    trainer = L.Trainer(max_steps=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                        accelerator="cpu", precision="bf16-mixed", callbacks=[callback])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(NoisyDPOptimizer, "add_noise", add_noise)
        trainer.fit(module, datamodule=dm)
    assert callback.steps == 4
    assert seen and set(seen) == {(torch.float32, False)}
    assert all(not torch.equal(before[n], p) for n, p in net.named_parameters() if "lora_" in n)


# -- inference and the frozen-prefix cache ------------------------------------------------------

def test_under_bf16_fp32_cached_features_give_exactly_the_whole_encoders_output():
    """The default cache dtype: the test metrics of a bf16 run are those of its logged model."""
    from radpriv.model.prefix_cache import PrefixCache

    net, tok = tiny()
    net.eval()
    table = synthetic_table(12)
    ids = tokenize_texts(table.texts, tok, 32)
    cache = PrefixCache(1, dtype=precision.feature_dtype("float32"))
    cache.build(net, "test", ids, batch_size=12, progress=False, autocast=precision.autocast(precision.BF16))
    chunk = pad_chunk([(i, ids[i], table.labels[i]) for i in range(len(ids))], 0)
    mask, length = chunk["attention_mask"], chunk["attention_mask"].shape[1]
    with torch.no_grad(), torch.autocast("cpu", dtype=BF16):
        whole = net(chunk["input_ids"], mask)
        cached = net(None, mask, prefix_hidden=cache.gather("test", chunk["index"], length), prefix_layers=1)
    assert torch.equal(cached, whole)
    with pytest.raises(ConfigError, match="prefix_cache_dtype"):
        precision.feature_dtype("float16")


def test_prefix_cache_in_bf16_halves_memory_and_matches_the_uncached_forward():
    from radpriv.model.prefix_cache import PrefixCache

    net, tok = tiny()
    net.eval()
    table = synthetic_table(12)
    ids = tokenize_texts(table.texts, tok, 32)
    caches = {}
    for dtype in (torch.float32, BF16):
        cache = PrefixCache(1, dtype=dtype)
        cache.build(net, "test", ids, batch_size=4, progress=False,
                    autocast=precision.autocast(precision.BF16 if dtype == BF16 else precision.FP32))
        caches[dtype] = cache
    assert caches[BF16].features["test"][0].dtype == BF16
    assert caches[BF16].nbytes() * 2 == caches[torch.float32].nbytes()
    length = max(len(x) for x in ids)
    chunk = pad_chunk([(i, ids[i], table.labels[i]) for i in range(len(ids))], 0, length)
    mask = chunk["attention_mask"]
    with torch.no_grad(), torch.autocast("cpu", dtype=BF16):
        whole = net(chunk["input_ids"], mask).float()
        cached = net(None, mask, prefix_hidden=caches[BF16].gather("test", chunk["index"], length),
                     prefix_layers=1).float()
    torch.testing.assert_close(cached, whole, atol=0.05, rtol=0.05)


def test_predict_in_bf16_is_close_to_fp32(tmp_path, monkeypatch):
    from radpriv.model.bundle import load_bundle, predict_proba, save_bundle

    net, tok = tiny()
    folder = save_bundle(tmp_path / "m", net, tok, resolve_spec("tiny_bert"), finetune_mode="lora",
                         label_names=["a", "b", "c"], thresholds=[0.5] * 3, max_length=32)
    texts = synthetic_table(12).texts
    fp32 = load_bundle(folder, "32-true")
    bf16 = load_bundle(folder, "bf16-mixed")
    assert (fp32.precision, bf16.precision) == ("32-true", "bf16-mixed")
    p32, p16 = predict_proba(fp32, texts), predict_proba(bf16, texts)
    assert p16.dtype == torch.float32
    assert not torch.equal(p32, p16)  # bf16 really ran
    torch.testing.assert_close(p16, p32, atol=0.02, rtol=0)
    monkeypatch.setenv("RADPRIV_PRECISION", "32-true")
    assert load_bundle(folder).precision == "32-true"
    monkeypatch.setenv("RADPRIV_PRECISION", "fp8")
    with pytest.raises(ConfigError, match="fp8"):
        load_bundle(folder)


# -- the GPU path, as far as a CPU can check it -------------------------------------------------

def test_trainer_gpu_preset_and_a_clear_error_without_a_gpu():
    cfg = compose(["trainer=gpu"])
    assert cfg.trainer.accelerator == "gpu" and cfg.privacy.max_physical_batch_size == 256
    assert cfg.trainer.eval_batch_size == 256
    assert cfg.trainer.precision == "32-true"  # the faster DP precision measured on a GPU
    assert cfg.privacy.expected_batch_size == compose([]).privacy.expected_batch_size
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU is visible"):
            precision.of_trainer(cfg.trainer)


def test_dataloader_workers_give_the_same_batches_and_poisson_draws_stay_in_the_main_process():
    import os

    _, tok = tiny()
    table = synthetic_table(40)
    loaders = []
    for workers in (0, 2):
        dm = ReportDataModule(table, tok, max_length=32, batch_size=8, physical_batch_size=4,
                              poisson=True, num_workers=workers)
        dm.setup("fit")
        loaders.append(dm)
    plain, workers = [list(dm.test_dataloader()) for dm in loaders]
    assert len(plain) == len(workers)
    for a, b in zip(plain, workers):
        assert all(torch.equal(a[k], b[k]) for k in a)
    # the batch sampler (every Poisson draw, from the private randomness) runs in this process
    sampler = loaders[1].train_dataloader().batch_sampler
    main_pid = os.getpid()
    drawn_in = []
    real_iter = type(sampler).__iter__

    def spy(self):
        drawn_in.append(os.getpid())
        return real_iter(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(type(sampler), "__iter__", spy)
        batches = list(loaders[1].train_dataloader())
    assert batches and set(drawn_in) == {main_pid}
