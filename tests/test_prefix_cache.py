"""The frozen-prefix cache computes the same model, and DP training on it stays DP-SGD."""

from __future__ import annotations

import torch

from radpriv.model import prefix_cache
from radpriv.model.module import ReportClassifierModule
from radpriv.privacy.callback import DPCallback
from tests.helpers.dp import LORA, fit, lora_state, make_dm, plan, tiny_net
from tests.synthetic import synthetic_table

TOP = {**LORA, "layers_to_transform": [1]}  # tiny_bert has 2 layers: LoRA on the top one


def test_prefix_layers_are_those_below_the_first_adapted_layer():
    net, _ = tiny_net("tiny_bert", TOP)
    assert prefix_cache.frozen_prefix_layers(net.encoder, TOP) == 1
    assert prefix_cache.frozen_prefix_layers(net.encoder, {**TOP, "cache_frozen_prefix": False}) == 0
    every, _ = tiny_net("tiny_bert", LORA)
    assert prefix_cache.frozen_prefix_layers(every.encoder, LORA) == 0
    # ALBERT's layers share one set of weights: there is no frozen prefix to cache
    albert, _ = tiny_net("tiny_albert", {**LORA, "layers_to_transform": [0]})
    assert prefix_cache.frozen_prefix_layers(albert.encoder, {**LORA, "layers_to_transform": [1]}) == 0


def test_cached_forward_equals_the_full_forward():
    net, tok = tiny_net("tiny_bert", TOP)
    for n, p in net.named_parameters():  # a non-zero adapter, so the top layer's LoRA matters
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.3)
    table = synthetic_table(40)
    dm = make_dm(table, tok, batch=8, physical=4, poisson=False)
    module = ReportClassifierModule(net, table.label_names, lr=0.01)
    cache = prefix_cache.PrefixCache(1)
    cache.build(net, "val", dm.datasets["val"].input_ids, batch_size=5, pad_id=dm.pad_id, progress=False)
    net.eval()
    for batch in dm.val_dataloader():
        full = module.logits(batch, "val")
        module.prefix_cache = cache
        cached = module.logits(batch, "val")
        module.prefix_cache = None
        torch.testing.assert_close(cached, full, rtol=1e-5, atol=1e-5)


def test_dp_training_on_cached_features_moves_the_adapter_and_counts_steps():
    net, tok = tiny_net("tiny_bert", TOP)
    table = synthetic_table(48)
    dm = make_dm(table, tok, batch=8, physical=4, poisson=True)
    module = ReportClassifierModule(net, table.label_names, lr=0.05, total_steps=4, schedule="constant")
    cache = prefix_cache.PrefixCache(1)
    for split, ds in dm.datasets.items():
        cache.build(net, split, ds.input_ids, pad_id=dm.pad_id, progress=False)
    module.prefix_cache = cache
    before = lora_state(net)
    callback = DPCallback(plan(1.0, 1.0, dm.sample_rate, 8, 4))
    fit(module, dm, [callback], max_steps=4)
    after = lora_state(net)
    adapted = [n for n in before if ".layer.1." in n]
    assert adapted and all(not torch.equal(before[n], after[n]) for n in adapted)
    assert callback.steps == 4


def test_top_half_is_the_upper_half_of_a_bert_stack_and_every_layer_of_albert():
    from radpriv.model.classifier import resolve_lora_layers
    from radpriv.model.encoder import load_encoder, resolve_spec

    bert, _ = load_encoder(resolve_spec("tiny_bert"))
    albert, _ = load_encoder(resolve_spec("tiny_albert"))
    assert resolve_lora_layers(bert, "top_half") == [1]
    assert resolve_lora_layers(albert, "top_half") is None
    assert resolve_lora_layers(bert, None) is None and resolve_lora_layers(bert, [0]) == [0]
    net, _ = tiny_net("tiny_bert", {**LORA, "layers_to_transform": "top_half"})
    assert prefix_cache.frozen_prefix_layers(net.encoder, {**LORA, "layers_to_transform": "top_half"}) == 1
    import pytest

    from radpriv.errors import ConfigError
    with pytest.raises(ConfigError, match="top_half"):
        resolve_lora_layers(bert, "bottom")
