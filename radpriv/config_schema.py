"""The types and ranges of the composed config's `privacy`, `trainer` and `finetune` groups.

Every value lives in radpriv/conf (the YAML files); the dataclasses below hold only what each
key may be: its type, its range or choices, and whether a group may leave it out (keys of one
fine-tuning mode only). `check(cfg)` runs at compose time (radpriv.config.compose), so a wrong
type (`privacy.epsilon=abc`), an out-of-range value (`privacy.delta=1`) or an unknown key (a
typo in a conf file, or `+privacy.epsilone=1`) stops the command with one ConfigError line that
names the key, before any data is read. A field annotated with another schema dataclass is a
nested mapping checked key by key the same way (`finetune.warm.trainabel=head`: unknown key);
messages name the full dotted key.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Union

from omegaconf import DictConfig, ListConfig, OmegaConf

from radpriv.errors import ConfigError


def spec(*, gt: float | None = None, ge: float | None = None, lt: float | None = None,
         le: float | None = None, choices: tuple | None = None, optional_key: bool = False,
         check: Callable[[Any], Any] | None = None) -> Any:
    """A schema field: no default value (defaults live in YAML), only constraints."""
    return dataclasses.field(metadata={"gt": gt, "ge": ge, "lt": lt, "le": le, "choices": choices,
                                       "optional_key": optional_key, "check": check})


def _epsilon(value: Any) -> None:
    from radpriv.privacy.accounting import resolve_epsilon

    resolve_epsilon(value)  # its own one-line ConfigError, as every reader of ε gives


def _lambdas(value: Any) -> None:
    from radpriv.model.interpolation import check_lambdas

    check_lambdas(value)  # the reader's own check: a non-empty list of numbers in [0, 1]


@dataclass
class PrivacySchema:
    epsilon: Any = spec(check=_epsilon)
    delta: float | None = spec(gt=0.0, lt=1.0)
    max_grad_norm: float | None = spec(gt=0.0)
    recipe_by_epsilon: list = spec()
    accountant: str = spec(choices=("prv", "rdp"))
    expected_batch_size: int = spec(ge=1)
    nonprivate_min_steps_per_epoch: int | None = spec(ge=1)
    max_physical_batch_size: int = spec(ge=1)
    unit: str = spec(choices=("auto", "patient", "report"))
    max_reports_per_patient: int | None = spec(ge=1)
    secure_mode: bool = spec()


@dataclass
class TrainerSchema:
    max_epochs: int = spec(ge=1)
    accelerator: str = spec()
    devices: Any = spec()  # a count, "auto", or a list of device indices (Lightning's forms)
    strategy: str = spec()
    num_nodes: int = spec(ge=1)
    num_threads: int | None = spec(ge=1)
    eval_batch_size: int = spec(ge=1)
    precision: str | int = spec()
    num_workers: int | str = spec()
    pin_memory: bool | str = spec()
    thresholds: str = spec(choices=("validation", "fixed", "dp", "public", "auto"))
    threshold_epsilon: float | None = spec(gt=0.0)
    progress_bar: bool = spec()
    log_every_n_steps: int = spec(ge=1)
    check_val_every_n_epoch: int = spec(ge=1)
    limit_train_batches: float | None = spec(gt=0.0)


@dataclass
class PublicSchema:
    """`finetune.public`: the public model of `finetune.init_from=public`."""

    data: dict | None = spec()  # null: the shipped corpus of the label schema; else a data config
    max_epochs: int = spec(ge=1)
    lr: float | None = spec(gt=0.0)  # null: the non-private rate


@dataclass
class WarmSchema:
    """`finetune.warm`: what DP-SGD trains from a warm start, and the interpolation back to it."""

    trainable: str = spec(choices=("all", "head"))
    top_layers: int | None = spec(ge=1)
    interpolate: bool = spec()
    lambdas: list = spec(check=_lambdas)
    # a λ > 0 must beat λ = 0 in this share of bootstrap resamples (0: the best λ on the split)
    confidence: float = spec(ge=0.0, le=1.0)


@dataclass
class FinetuneSchema:
    mode: str = spec(choices=("lora", "full"))
    # LoRA only (finetune=lora)
    r: int = spec(ge=1, optional_key=True)
    alpha: float = spec(gt=0.0, optional_key=True)
    dropout: float = spec(ge=0.0, lt=1.0, optional_key=True)
    target_modules: list = spec(optional_key=True)
    layers_to_transform: Any = spec(optional_key=True)  # top_half, null or a list of indices
    cache_frozen_prefix: bool = spec(optional_key=True)
    prefix_cache_max_gb: float = spec(ge=0.0, optional_key=True)
    prefix_cache_dtype: str = spec(choices=("float32", "bfloat16"), optional_key=True)
    # full fine-tuning's own non-private batch (absent: privacy.expected_batch_size)
    nonprivate_batch_size: int | None = spec(ge=1, optional_key=True)
    head_dropout: float = spec(ge=0.0, lt=1.0)
    head_bias_init: float = spec()
    head_init: str = spec(choices=("random", "label_names"))
    head_init_scale: float = spec()
    normalize_pooled: bool = spec()
    head_lr_multiplier: float = spec(gt=0.0)
    init_from: Any = spec()  # null, public, a run id, runs:/…, models:/… or a folder
    public: PublicSchema = spec()
    warm: WarmSchema = spec()
    optimizer: str = spec()
    lr: float | None = spec(gt=0.0)
    weight_decay: float = spec(ge=0.0)
    warmup_ratio: float = spec(ge=0.0, le=1.0)
    schedule: str = spec(choices=("linear", "constant"))


#: config group -> the schema its composed node is checked against
SCHEMAS: dict[str, type] = {"privacy": PrivacySchema, "trainer": TrainerSchema, "finetune": FinetuneSchema}

_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
               list: "a list", dict: "a mapping", type(None): "null"}


def _allowed(annotation: Any) -> tuple[type, ...] | None:
    """The Python types an annotation admits; None: any value."""
    if annotation is Any:
        return None
    if typing.get_origin(annotation) in (Union, types.UnionType):
        out: tuple[type, ...] = ()
        for arg in typing.get_args(annotation):
            sub = _allowed(arg)
            if sub is None:
                return None
            out += sub
        return out
    return (annotation,)


def _is(value: Any, kind: type) -> bool:
    if dataclasses.is_dataclass(kind):  # a nested schema: a mapping, checked key by key
        kind = dict
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if kind is float:  # an integer is a number too
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if kind is list:
        return isinstance(value, (list, tuple, ListConfig))
    if kind is dict:
        return isinstance(value, (Mapping, DictConfig))
    if kind is type(None):
        return value is None
    return isinstance(value, kind)


def _check_value(key: str, value: Any, annotation: Any, meta: Mapping[str, Any]) -> None:
    kinds = _allowed(annotation)
    if kinds is not None and not any(_is(value, k) for k in kinds):
        words = " or ".join(_TYPE_WORDS.get(dict if dataclasses.is_dataclass(k) else k, k.__name__)
                            for k in kinds)
        raise ConfigError(f"{key}={value!r}: must be {words}")
    nested = next((k for k in kinds or () if dataclasses.is_dataclass(k)), None)
    if nested is not None and _is(value, dict):
        _check_node(key, nested, value)
        return
    if meta["check"] is not None:
        meta["check"](value)
    if value is None:
        return
    if meta["choices"] is not None and str(value).strip().lower() not in meta["choices"]:  # readers lower-case
        raise ConfigError(f"{key}={value!r}: choose one of {', '.join(map(str, meta['choices']))}")
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        if math.isnan(float(value)):
            raise ConfigError(f"{key}={value!r}: must be a number, not NaN")
        bounds = (("gt", "> ", lambda v, b: v > b), ("ge", "≥ ", lambda v, b: v >= b),
                  ("lt", "< ", lambda v, b: v < b), ("le", "≤ ", lambda v, b: v <= b))
        for name, sign, ok in bounds:
            bound = meta[name]
            if bound is not None and not ok(value, bound):
                raise ConfigError(f"{key}={value!r}: must be {sign}{bound:g}")


def check_group(group: str, node: Any) -> None:
    """Check one composed group against its schema: unknown keys, missing keys, types, ranges."""
    if not isinstance(node, (Mapping, DictConfig)):
        raise ConfigError(f"{group}={node!r}: must be a mapping of settings")
    _check_node(group, SCHEMAS[group], node)


def _check_node(path: str, schema: type, node: Any) -> None:
    """Check the mapping at dotted key `path` against `schema`, recursing into nested schemas."""
    fields = {f.name: f for f in dataclasses.fields(schema)}
    hints = typing.get_type_hints(schema)
    for key in node:
        if key not in fields:
            raise ConfigError(f"{path}.{key}: unknown key (known: {', '.join(sorted(fields))})")
    for name, f in fields.items():
        if name not in node:
            if f.metadata["optional_key"]:
                continue
            group = path.split(".")[0]
            raise ConfigError(f"{path}.{name} is missing from the composed config "
                              f"(radpriv/conf/{group}/*.yaml sets every key)")
        value = OmegaConf.select(node, name) if isinstance(node, DictConfig) else node[name]
        _check_value(f"{path}.{name}", value, hints[name], f.metadata)


def check(cfg: DictConfig) -> None:
    """Check every schema group the composed config holds (`radpriv.config.compose` calls it)."""
    for group in SCHEMAS:
        if group in cfg:
            check_group(group, cfg[group])
