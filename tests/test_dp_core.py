"""The DP-SGD mechanics: per-sample gradients, clipping and noise, steps and accounting.

Tiny random encoders (BERT and ALBERT) and fabricated reports: seconds, CPU only.
"""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from opacus.grad_sample import GradSampleHooks

from radpriv.data.datamodule import LogicalBatch, pad_chunk
from radpriv.data.tokens import tokenize_texts
from radpriv.model.classifier import build_classifier
from radpriv.model.encoder import load_encoder, resolve_spec
from radpriv.model.module import ReportClassifierModule, per_sample_loss
from radpriv.privacy.accounting import calibrate_noise_multiplier
from radpriv.privacy.callback import DPCallback
from tests.helpers.dp import LORA, fit, lora_state, make_dm, plan, tiny_net
from tests.synthetic import synthetic_table

ENCODERS = ["tiny_bert", "tiny_albert"]


@pytest.mark.parametrize("name", ENCODERS)
def test_every_trainable_parameter_gets_the_right_per_sample_gradient(name):
    net, tok = tiny_net(name)
    for n, p in net.named_parameters():  # non-zero lora_B so that lora_A's gradients are non-zero
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.2)
    table = synthetic_table(12)
    ids = tokenize_texts(table.texts, tok, 32)
    chunk = pad_chunk([(i, ids[i], table.labels[i]) for i in range(6)], tok.pad_token_id)
    trainable = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    assert any("lora_A" in n for n, _ in trainable) and any("head" in n for n, _ in trainable)
    assert not any("embeddings" in n for n, _ in trainable)

    hooks = GradSampleHooks(net, batch_first=True, loss_reduction="sum")
    net.train()
    per_sample_loss(net(chunk["input_ids"], chunk["attention_mask"]), chunk["labels"]).sum().backward()
    missing = [n for n, p in trainable if getattr(p, "grad_sample", None) is None]
    assert not missing, f"no per-sample gradient for {missing}"
    grad_samples = {n: p.grad_sample.detach().clone() for n, p in trainable}
    hooks.cleanup()

    for i in range(6):  # each report alone, by plain autograd
        net.zero_grad()
        one = slice(i, i + 1)
        per_sample_loss(net(chunk["input_ids"][one], chunk["attention_mask"][one]),
                        chunk["labels"][one]).sum().backward()
        for n, p in trainable:
            torch.testing.assert_close(grad_samples[n][i], p.grad, rtol=1e-4, atol=1e-6, msg=n)
        assert any(grad_samples[n][i].abs().sum() > 0 for n, _ in trainable if "lora_A" in n)


@pytest.mark.parametrize("name", ENCODERS)
def test_lora_weights_change_under_dp(name):
    """opacus#820: DP-LoRA can train for hours while the adapter never moves."""
    net, tok = tiny_net(name)
    table = synthetic_table(48)
    dm = make_dm(table, tok, batch=8, physical=4, poisson=True)
    module = ReportClassifierModule(net, table.label_names, lr=0.05, total_steps=4, schedule="constant")
    before = lora_state(net)
    head_before = net.head.weight.detach().clone()
    callback = DPCallback(plan(1.0, 1.0, dm.sample_rate, 8, 4))
    fit(module, dm, [callback], max_steps=4)
    after = lora_state(net)
    for n in before:
        assert not torch.equal(before[n], after[n]), f"{n} did not change under DP"
    assert not torch.equal(head_before, net.head.weight)
    assert callback.steps == 4


@pytest.mark.parametrize("name", ENCODERS)
def test_dp_step_without_noise_or_clipping_equals_a_plain_step(name):
    table = synthetic_table(48)
    n_train = len(table.subset("train"))
    results = []
    for private in (False, True):
        net, tok = tiny_net(name, seed=1)
        for n, p in net.named_parameters():
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.2, generator=torch.Generator().manual_seed(3))
        # the whole training split in one logical batch (q = 1), three physical chunks
        dm = make_dm(table, tok, batch=n_train, physical=12, poisson=private)
        module = ReportClassifierModule(net, table.label_names, lr=0.5, total_steps=1,
                                        schedule="constant", optimizer="sgd")
        callbacks = [DPCallback(plan(0.0, 1e6, 1.0, n_train, 1))] if private else []
        fit(module, dm, callbacks, max_steps=1)
        results.append({n: p.detach().clone() for n, p in net.named_parameters() if p.requires_grad})
    plain, dp = results
    for n in plain:
        torch.testing.assert_close(dp[n], plain[n], rtol=1e-5, atol=1e-6, msg=n)
    init, _ = tiny_net(name, seed=1)
    assert any(not torch.allclose(plain[n], p) for n, p in init.named_parameters() if p.requires_grad)


def test_clipping_bounds_each_report_and_noise_has_the_planned_scale(lightning_shims):
    """With one report per step and C tiny, the update is clip(g)/b + N(0, (σC/b)²)."""
    net, tok = tiny_net("tiny_bert")
    table = synthetic_table(12)
    ids = tokenize_texts(table.texts, tok, 32)
    from opacus.optimizers import DPOptimizer

    from radpriv.privacy.dp_step import DPStep

    params = [p for p in net.parameters() if p.requires_grad]
    hooks = GradSampleHooks(net, batch_first=True, loss_reduction="sum")
    sigma, clip, b = 2.0, 1e-3, 4
    opt = DPOptimizer(torch.optim.SGD(params, lr=1.0), noise_multiplier=sigma, max_grad_norm=clip,
                      expected_batch_size=b)

    module, wrapped = lightning_shims(net, opt)
    deltas = []
    torch.manual_seed(0)
    for _ in range(30):
        before = torch.cat([p.detach().flatten().clone() for p in params])
        items = [(i, ids[i], table.labels[i]) for i in range(3)]
        batch = LogicalBatch(chunks=[pad_chunk(items[:2], 0), pad_chunk(items[2:], 0)], size=3)
        DPStep()(module, wrapped, batch)
        deltas.append(before - torch.cat([p.detach().flatten() for p in params]))
    hooks.cleanup()
    d = torch.stack(deltas)
    # signal ≤ 3·C/b per coordinate set; noise std σC/b dominates: check the empirical std
    expected = sigma * clip / b
    assert abs(float(d.std()) / expected - 1) < 0.05


def test_an_empty_poisson_batch_is_still_a_noisy_accounted_step():
    net, tok = tiny_net("tiny_bert")
    table = synthetic_table(24)
    dm = make_dm(table, tok, batch=4, physical=4, poisson=True)
    module = ReportClassifierModule(net, table.label_names, lr=0.1, total_steps=1, schedule="constant")
    callback = DPCallback(plan(1.0, 1.0, dm.sample_rate, 4, 1))
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", callbacks=[callback],
                        max_steps=1, limit_val_batches=0)
    before = copy.deepcopy(lora_state(net))

    class _Batches(torch.utils.data.IterableDataset):
        def __iter__(self):
            yield LogicalBatch(chunks=[], size=0)

    loader = torch.utils.data.DataLoader(_Batches(), batch_size=None)
    trainer.fit(module, train_dataloaders=loader)
    assert callback.steps == 1
    after = lora_state(net)
    assert all(not torch.equal(before[n], after[n]) for n in before)


def test_planned_steps_spend_the_target_epsilon():
    net, tok = tiny_net("tiny_bert")
    table = synthetic_table(60)
    dm = make_dm(table, tok, batch=8, physical=8, poisson=True)
    steps = 2 * dm.steps_per_epoch
    target = 3.0
    cal = calibrate_noise_multiplier(target, 1e-3, dm.sample_rate, steps, accountant="prv", relation="replace_one")
    callback = DPCallback(plan(cal.noise_multiplier, 1.0, dm.sample_rate, 8, steps, target=target,
                                 delta=1e-3))
    module = ReportClassifierModule(net, table.label_names, lr=0.01, total_steps=steps)
    fit(module, dm, [callback], max_epochs=2)
    assert callback.steps == steps
    eps = callback.epsilon()
    assert 0.99 * target <= eps <= target


def test_encoders_loaded_in_eval_mode_still_train_in_train_mode(tmp_path):
    """`from_pretrained` returns eval-mode modules; Opacus records only training-mode modules."""
    encoder, tok = load_encoder(resolve_spec("tiny_bert"))
    encoder.save_pretrained(tmp_path / "enc")
    tok.save_pretrained(tmp_path / "enc")
    loaded, tok = load_encoder(resolve_spec(str(tmp_path / "enc")))
    assert not loaded.training
    net = build_classifier(loaded, 3, LORA)
    modes = []
    net.encoder.get_base_model().encoder.layer[0].register_forward_pre_hook(
        lambda m, _args: modes.append(m.training))
    table = synthetic_table(24)
    dm = make_dm(table, tok, batch=8, physical=8, poisson=True)
    module = ReportClassifierModule(net, table.label_names, lr=0.05, total_steps=2)
    before = lora_state(net)
    fit(module, dm, [DPCallback(plan(1.0, 1.0, dm.sample_rate, 8, 2))], max_steps=2)
    assert modes and all(modes)
    assert all(not torch.equal(before[n], p) for n, p in lora_state(net).items())
