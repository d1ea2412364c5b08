"""`finetune.init_from=public`: find or train the public model of the run's label schema.

The public model is an ordinary non-private radpriv run on the public corpus (the shipped corpus
of the schema, radpriv/data/public_corpora.py, or `finetune.public.data`) with the private run's
encoder and adapter shape, logged to the `radpriv-public` experiment and registered as
`radpriv-public-<schema>-<model>`. It is trained once: a later run finds it by run key (its
config and its data, as a sweep finds its finished cells) and starts from it. Finding or
training it needs MLflow and the training loop, so that part is radpriv.train's
`find_or_train_public_model`; this module only reads the corpus and makes the config.

Before anything is trained, the overlap guard (radpriv/data/overlap.py) refuses a private run
whose training reports the public corpus contains.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf, open_dict

from radpriv.config import CONF_DIR, recipe_row
from radpriv.data import overlap
from radpriv.data.public_corpora import CorpusChoice, choice_for, corpus_for, public_data_cfg
from radpriv.data.sources import load_table
from radpriv.data.table import ReportTable
from radpriv.errors import ConfigError, DataError

log = logging.getLogger(__name__)

PUBLIC = "public"
EXPERIMENT = "radpriv-public"
PUBLIC_MODEL_TAG = "radpriv.public_model"


@dataclass(frozen=True)
class PublicCorpusData:
    """The public corpus of a run: which one, its reports, and whether it is the run's own dataset."""

    choice: CorpusChoice
    data_cfg: DictConfig
    table: ReportTable
    same_dataset: bool

    def record(self, check: overlap.OverlapCheck | None = None) -> dict:
        """What privacy.json says of it: names and counts only."""
        out = {"schema": self.choice.corpus.schema, "dataset": self.table.name,
               "labels_shared": list(self.choice.shared_labels),
               "labels_fresh": list(self.choice.fresh_labels),
               "same_dataset_complement_shard": self.same_dataset}
        if check is not None:
            out["overlap_guard"] = check.as_dict()
        return out


def load_public_corpus(cfg: DictConfig, table: ReportTable) -> PublicCorpusData:
    """The public corpus of this run's label schema, read (from $RADPRIV_DATA_DIR, its download,
    or `finetune.public.data`)."""
    given = cfg.finetune[PUBLIC].data
    given = OmegaConf.to_container(given, resolve=True) if given else None
    choice = None if given else corpus_for(table.label_names)
    data_cfg, same = public_data_cfg(choice, cfg.data, given)
    try:
        public = load_table(data_cfg, int(cfg.seed))
    except DataError as e:
        what = choice.corpus.schema if choice else "finetune.public.data"
        raise DataError(f"the public corpus of {what} ({data_cfg.name}) could not be read for "
                        f"finetune.init_from=public / trainer.thresholds=public: {e} (or point "
                        "finetune.public.data at a copy of it)") from None
    if choice is None:
        choice = choice_for(public.label_names, table.label_names, str(data_cfg.name))
    return PublicCorpusData(choice, data_cfg, public, same)


# finetune settings of how a run trains, not of what model it trains
_PRIVATE_RUN_TRAINING = ("optimizer", "lr", "weight_decay", "warmup_ratio", "schedule", "head_lr_multiplier",
                         "nonprivate_batch_size")


def model_name(cfg: DictConfig, schema: str) -> str:
    return f"radpriv-public-{schema}-{cfg.model.name}"


def public_run_cfg(cfg: DictConfig, corpus: PublicCorpusData) -> DictConfig:
    """The public model's config: the private run's encoder and adapter on the public corpus,
    non-private, with the non-private recipe; nothing of the private run's privacy settings."""
    pub = copy.deepcopy(cfg)
    settings = cfg.finetune[PUBLIC]
    # how the private run trains (its optimizer, rate, batch, privacy) is not the public model's:
    # those come from the shipped defaults, so every private run of an encoder and adapter shape
    # shares one public model
    shipped = OmegaConf.load(CONF_DIR / "finetune" / f"{cfg.finetune.mode}.yaml")
    privacy = OmegaConf.load(CONF_DIR / "privacy" / "dp.yaml")
    with open_dict(pub):
        pub.data = corpus.data_cfg
        for key in _PRIVATE_RUN_TRAINING:
            if key in shipped:
                pub.finetune[key] = shipped[key]
        pub.privacy = OmegaConf.merge(privacy, {"epsilon": None, "max_grad_norm": None,
                                                "max_physical_batch_size": cfg.privacy.max_physical_batch_size})
        given_lr = settings.lr
        if given_lr is not None:
            pub.finetune.lr = float(given_lr)
        elif pub.finetune.lr is None:  # the non-private row of the recipe (full: its own rate)
            pub.finetune.lr = float(recipe_row(privacy.recipe_by_epsilon, None)["lr"])
        pub.finetune.init_from = None
        pub.finetune.warm = None  # how a private run adapts it is not the public model's business
        pub.trainer.max_epochs = int(settings.max_epochs)
        pub.trainer.thresholds = "validation"
        pub.trainer.strategy = "auto"
        pub.trainer.devices = 1
        pub.run_name = f"public-{corpus.choice.corpus.schema}-{cfg.model.name}"
        pub.tracking.experiment = EXPERIMENT
        pub.tracking.parent_run_id = None
        pub.tracking.log_model = True
        pub.tracking.register = model_name(cfg, corpus.choice.corpus.schema)
        pub.tracking.register_alias = None
        pub.tracking.tags = {PUBLIC_MODEL_TAG: corpus.choice.corpus.schema}
    return pub


def with_public_validation(table: ReportTable, corpus: PublicCorpusData) -> ReportTable:
    """This run's table with its validation split replaced by the public corpus' (labels mapped by
    name; a label the corpus lacks is masked there): `trainer.thresholds=public` then fits
    thresholds, and any model selection, on public reports, and the private validation reports
    are not used at all."""
    import numpy as np

    from radpriv.model.metrics import MASKED

    keep = [i for i, s in enumerate(table.split) if s != "val"]
    pub = [i for i, s in enumerate(corpus.table.split) if s == "val"]
    if not pub:
        raise ConfigError(f"trainer.thresholds=public: the public corpus {corpus.table.name} has no validation split")
    cols = [corpus.table.label_names.index(n) if n in corpus.table.label_names else None for n in table.label_names]
    labels = np.full((len(pub), table.num_labels), MASKED, dtype=np.float32)
    for j, c in enumerate(cols):
        if c is not None:
            labels[:, j] = corpus.table.labels[pub, c]
    patients = None
    if table.patient_ids is not None:
        pub_patients = corpus.table.patient_ids or corpus.table.ids
        patients = tuple(table.patient_ids[i] for i in keep) + tuple(f"public:{pub_patients[i]}" for i in pub)
    return ReportTable(
        name=table.name,
        ids=tuple(table.ids[i] for i in keep) + tuple(f"public:{corpus.table.ids[i]}" for i in pub),
        texts=tuple(table.texts[i] for i in keep) + tuple(corpus.table.texts[i] for i in pub),
        labels=np.concatenate([table.labels[keep], labels]),
        label_names=table.label_names,
        split=tuple(table.split[i] for i in keep) + ("val",) * len(pub),
        patient_ids=patients,
        excluded={**table.excluded, "private validation reports (trainer.thresholds=public: unused)":
                  sum(s == "val" for s in table.split)},
        source=table.source,
        patient_source=table.patient_source,
    )
