"""The public corpus of each label schema radpriv ships, and the data config that reads it.

`finetune.init_from=public` trains a non-private model on the public reports of the run's label
schema and DP-trains the private run from it (radpriv/model/public_start.py). Which corpus fits
is decided here, by label names:
- CheXpert-14 (MIMIC-CXR, Open-i `labels: chexpert_mesh`, a CSV with those columns): Open-i;
- CT-RATE-18 (CT-RATE, `ct_rate_text`, a CSV with those columns): the public CT-RATE report text
  (`data=ct_rate_text`).
A schema that is neither is matched to the corpus that shares most label names; its labels the
corpus lacks start fresh.

When the private data *are* the public corpus (the half/half simulation: `data=openi
data.train_shard=1/2`), the public model trains on every other shard of the same split: the
complement of the private training patients, never a report of theirs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from radpriv.config import CONF_DIR
from radpriv.data.schemas import CHEXPERT14, CT_RATE18
from radpriv.data.splits import parse_shard
from radpriv.errors import ConfigError


@dataclass(frozen=True)
class PublicCorpus:
    schema: str  # the registered model's name part: radpriv-public-<schema>-<model>
    label_names: tuple[str, ...]
    data_option: str  # conf/data/<option>.yaml
    overrides: tuple[tuple[str, object], ...] = ()

    def data_cfg(self) -> DictConfig:
        cfg = OmegaConf.load(CONF_DIR / "data" / f"{self.data_option}.yaml")
        for key, value in self.overrides:
            cfg[key] = value
        return cfg


CORPORA: tuple[PublicCorpus, ...] = (
    PublicCorpus("chexpert14", CHEXPERT14, "openi", (("labels", "chexpert_mesh"),)),
    PublicCorpus("ct_rate18", CT_RATE18, "ct_rate_text"),
)


@dataclass(frozen=True)
class CorpusChoice:
    corpus: PublicCorpus
    shared_labels: tuple[str, ...]  # this run's labels the public model has (mapped by name)
    fresh_labels: tuple[str, ...]  # this run's labels it lacks: their head rows start fresh


def corpus_for(label_names) -> CorpusChoice:
    """The corpus of this label schema: the same names, else the most shared names (≥ 1)."""
    names = tuple(label_names)
    best = max(CORPORA, key=lambda c: (set(c.label_names) == set(names), len(set(c.label_names) & set(names))))
    shared = tuple(n for n in names if n in best.label_names)
    if not shared:
        raise ConfigError(
            f"finetune.init_from=public: no public corpus radpriv knows shares a label with this run "
            f"({', '.join(names[:6])}{', …' if len(names) > 6 else ''}); known schemas: "
            + "; ".join(f"{c.schema} ({c.data_option})" for c in CORPORA)
            + ". Give finetune.init_from=<run id | models:/… | folder> of your own public model")
    return CorpusChoice(best, shared, tuple(n for n in names if n not in best.label_names))


def same_source(private: Mapping, public: Mapping) -> bool:
    """Whether the two configs read the same reports (same reader, same file)."""
    return private.get("name") == public.get("name") and private.get("path") == public.get("path")


def choice_for(public_labels, label_names, data_name: str) -> CorpusChoice:
    """A given public corpus (`finetune.public.data`): its schema by its label names (a shipped one,
    else `custom-<data name>`) and the run's labels it shares."""
    public_labels, names = tuple(public_labels), tuple(label_names)
    known = next((c for c in CORPORA if set(c.label_names) == set(public_labels)), None)
    corpus = known or PublicCorpus(f"custom-{data_name}", public_labels, data_name)
    shared = tuple(n for n in names if n in public_labels)
    if not shared:
        raise ConfigError(f"finetune.public.data: its labels share no name with this run's "
                          f"({', '.join(names[:6])}{', …' if len(names) > 6 else ''})")
    return CorpusChoice(corpus, shared, tuple(n for n in names if n not in public_labels))


def _given_data_cfg(given: Mapping) -> DictConfig:
    """`finetune.public.data`: a data config over its reader's shipped defaults."""
    name = given.get("name")
    conf = CONF_DIR / "data" / f"{name}.yaml"
    if not conf.is_file():
        raise ConfigError(f"finetune.public.data.name={name!r}: expected one of "
                          f"{', '.join(sorted(p.stem for p in conf.parent.glob('*.yaml')))}")
    return OmegaConf.merge(OmegaConf.load(conf), OmegaConf.create(dict(given)))


def public_data_cfg(choice: CorpusChoice | None, private_data: Mapping,
                    given: Mapping | None = None) -> tuple[DictConfig, bool]:
    """The public corpus' data config, and whether it reads the private run's own dataset.

    `given`: `finetune.public.data`, a data config that replaces the shipped corpus (null: the
    corpus of `choice`). When it reads the private dataset, the public model takes the complement
    of the private training shard under the same split seed, and a private run that uses the whole
    dataset is refused (every training report would be in both)."""
    cfg = _given_data_cfg(given) if given else choice.corpus.data_cfg()
    if not same_source(private_data, cfg):
        return cfg, False
    shard = private_data.get("train_shard")
    if not shard:
        raise ConfigError(
            f"finetune.init_from=public: this run's data ({private_data.get('name')}) is the public corpus "
            "itself, so every private training report would be in it. Train on part of it "
            "(data.train_shard=1/2: the public model then takes the other shards) or on your own data")
    i, k = parse_shard(shard)
    cfg.train_shard = f"{1 - i}/2" if k == 2 else f"~{i}/{k}"
    cfg.split_seed = private_data.get("split_seed")  # the public run has the private run's seed
    # the same reports and split as the private run: only the labels may differ
    for key in ("path", "test_ids_path", "val_fraction", "test_fraction", "text_fields", "exclude_unlabelled"):
        if key in private_data and key in cfg:
            cfg[key] = private_data[key]
    return cfg, True
