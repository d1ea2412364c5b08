"""What the encoder's dropout costs a DP-LoRA step on this CPU, and what a faster mask would save.

    python benchmarks/dropout_cost.py [--tokens 80] [--reps 6]

One 32-report chunk of the recipe's trained layers (MiniLM layers 3-5, LoRA on query and value,
on top of cached layer-2 features), forward and backward under bf16 autocast, timed in one
process with the variants alternated: the encoder as loaded (dropout 0.1 on attention
probabilities and hidden states), without the hidden-state dropout, without any dropout, and
with the hidden-state masks drawn from 64-bit integers (two 32-bit uniforms each) instead of
`bernoulli_`. Prints the best time per chunk of each (ms) and its ratio to the first.

Only timing: the variants without dropout or with the other mask change what is trained, and
the recipe uses none of them.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn


class IntegerMaskDropout(nn.Module):
    """Dropout whose keep mask compares 32-bit uniform integers with round(p · 2³²)."""

    def __init__(self, p: float):
        super().__init__()
        self.p, self.threshold = p, -(2**31) + round(p * 2**32)
        self.scale = 1.0 / (1.0 - round(p * 2**32) / 2**32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        n = x.numel()
        bits = torch.empty((n + 1) // 2, dtype=torch.int64).random_(-(2**63), None)
        keep = bits.view(torch.int32)[:n].view(x.shape) >= self.threshold
        return x * keep.to(x.dtype).mul_(self.scale)


def build(hidden: float, attention: float, integer_masks: bool = False) -> nn.Module:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    from radpriv.model.encoder import packaged_minilm_dir

    model = AutoModel.from_pretrained(packaged_minilm_dir(), hidden_dropout_prob=hidden,
                                      attention_probs_dropout_prob=attention)
    model.requires_grad_(False)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"],
                                             layers_to_transform=[3, 4, 5]))
    if integer_masks:
        for layer in model.base_model.model.encoder.layer:
            layer.attention.output.dropout = IntegerMaskDropout(hidden)
            layer.output.dropout = IntegerMaskDropout(hidden)
    return model.train()


def chunk_step(model: nn.Module, features: torch.Tensor, attention_mask: torch.Tensor) -> None:
    from radpriv.model.prefix_cache import suffix_forward

    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = suffix_forward(model, features, attention_mask, 3)
    hidden.float().mean(1).sum().backward()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=80, help="chunk length (Open-i reports average ≈ 60)")
    ap.add_argument("--reps", type=int, default=6, help="alternating repetitions (the best is reported)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    features = torch.randn(32, args.tokens, 384)
    attention_mask = torch.ones(32, args.tokens, dtype=torch.long)
    attention_mask[16:, args.tokens * 3 // 4:] = 0  # padded rows, as in a length-sorted chunk
    variants = {"as loaded (the recipe)": build(0.1, 0.1), "no hidden-state dropout": build(0.0, 0.1),
                "no dropout": build(0.0, 0.0), "hidden-state masks from integers": build(0.1, 0.1, True)}
    best = dict.fromkeys(variants, float("inf"))
    for model in variants.values():
        chunk_step(model, features, attention_mask)  # warm-up
    for _ in range(args.reps):
        for name, model in variants.items():
            t0 = time.perf_counter()
            for _ in range(3):
                chunk_step(model, features, attention_mask)
            best[name] = min(best[name], (time.perf_counter() - t0) / 3)
    base = best["as loaded (the recipe)"]
    print(f"| one chunk: 32 reports × {args.tokens} tokens, layers 3-5, bf16 | ms | / as loaded |")
    print("|---|---|---|")
    for name, seconds in best.items():
        print(f"| {name} | {seconds * 1000:.0f} | {seconds / base:.2f} |")


if __name__ == "__main__":
    main()
