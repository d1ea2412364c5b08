"""finetune.init_from=public: the public corpus of a schema, the overlap guard, the public model
trained once and reused, public validation (trainer.thresholds=public), head-only adaptation and
the interpolation back towards the public start."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from radpriv.cli import main
from radpriv.config import compose
from radpriv.data.overlap import check_no_overlap, normalised_text
from radpriv.data.public_corpora import corpus_for
from radpriv.data.schemas import CHEXPERT14, CT_RATE18, NEGBIO14
from radpriv.errors import ConfigError, PrivacyError
from radpriv.model import prefix_cache
from radpriv.model.interpolation import WarmSource, best_lambda, check_lambdas
from radpriv.train import build
from tests.synthetic import synthetic_table

TINY = ["model=tiny_bert", "data=ct_rate_text", "data.max_length=48", "trainer.max_epochs=2",
        "trainer.progress_bar=false", "privacy.expected_batch_size=8", "privacy.max_physical_batch_size=4",
        "trainer.eval_batch_size=16", "finetune.public.max_epochs=2"]


def _public_start(csv_path: Path, public_csv: Path | None = None) -> list[str]:
    """A private half of `csv_path` that starts from the public model of `public_csv` (default:
    the other half of the same file)."""
    return [*TINY, f"data.path={csv_path}", "data.train_shard=1/2", "finetune.init_from=public",
            f"finetune.public.data={{name:ct_rate_text,path:{public_csv or csv_path}}}"]


def _run(capsys, overrides) -> dict:
    assert _exit_code(["train", *overrides]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _exit_code(argv) -> int:
    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code


# ------------------------------------------------------------------ the corpus of a schema

def test_each_shipped_schema_has_its_public_corpus_and_other_schemas_map_by_name():
    assert corpus_for(CHEXPERT14).corpus.data_option == "openi"
    assert corpus_for(CT_RATE18).corpus.data_option == "ct_rate_text"
    negbio = corpus_for(NEGBIO14)  # NegBio's 15 labels against CheXpert-14: shared by name only
    assert negbio.corpus.schema == "chexpert14"
    assert set(negbio.shared_labels) == {"Atelectasis", "Cardiomegaly", "Pneumonia", "Pneumothorax",
                                         "Consolidation", "Edema", "No Finding"}
    assert "Effusion" in negbio.fresh_labels and "Pleural Effusion" not in negbio.fresh_labels
    with pytest.raises(ConfigError, match="no public corpus"):
        corpus_for(("label_0", "label_1"))


def test_a_run_on_the_whole_public_corpus_is_refused(reports_csv):
    path = reports_csv[0]
    cfg = compose([*TINY, f"data.path={path}", "finetune.init_from=public",
                   f"finetune.public.data={{name:ct_rate_text,path:{path}}}"])
    with pytest.raises(ConfigError, match="is the public corpus itself"):
        build(cfg)


# ------------------------------------------------------------------ the overlap guard

def test_the_overlap_guard_refuses_a_planted_report_by_normalised_text():
    public = synthetic_table(60, seed=1, name="public")
    private = synthetic_table(60, seed=2, name="private")
    private = replace(private, texts=tuple(f"private marker {i}. {t}" for i, t in enumerate(private.texts)))
    check = check_no_overlap(private, public, same_dataset=False)  # disjoint: passes
    assert check.private_checked == sum(s == "train" for s in private.split)

    source = next(i for i, s in enumerate(public.split) if s == "train")
    target = next(i for i, s in enumerate(private.split) if s == "train")
    planted = "  " + public.texts[source].upper().replace(".", " ;") + "  "  # case, punctuation, spaces
    assert normalised_text(planted) == normalised_text(public.texts[source])
    texts = list(private.texts)
    texts[target] = planted
    with pytest.raises(PrivacyError, match=r"1 of this run's \d+ training reports .* normalised text"):
        check_no_overlap(replace(private, texts=tuple(texts)), public, same_dataset=False)
    # a copy in the private *test* split is no overlap: the test reports are not trained on
    test_row = next(i for i, s in enumerate(private.split) if s == "test")
    texts = list(private.texts)
    texts[test_row] = public.texts[source]
    check_no_overlap(replace(private, texts=tuple(texts)), public, same_dataset=False)


def test_within_one_dataset_ids_decide():
    table = synthetic_table(60, seed=3)
    train = [i for i, s in enumerate(table.split) if s == "train"]
    half = set(train[: len(train) // 2])
    public = replace(table, split=tuple("test" if i in set(train) - half else s for i, s in enumerate(table.split)))
    private = replace(table, split=tuple("test" if i in half else s for i, s in enumerate(table.split)))
    # the same wording under another id (a template) is another study
    texts = list(private.texts)
    texts[train[-1]] = table.texts[train[0]]
    check_no_overlap(replace(private, texts=tuple(texts)), public, same_dataset=True)
    # the same id is the same report
    with pytest.raises(PrivacyError, match="compared by id"):
        check_no_overlap(table, public, same_dataset=True)


def test_a_private_csv_holding_a_public_report_is_refused_before_anything_trains(
        tracking_uri, reports_csv, tmp_path, capsys):
    path, texts = reports_csv
    rows = list(csv.reader(path.open(encoding="utf-8")))
    private = tmp_path / "private.csv"  # the same reports under new ids: another dataset
    with private.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(rows[0])
        for i, row in enumerate(rows[1:]):
            w.writerow([f"train_{1000 + i}_b_1", *row[1:]])
    argv = ["train", *TINY, f"data.path={private}", "finetune.init_from=public",
            f"finetune.public.data={{name:ct_rate_text,path:{path}}}"]
    assert _exit_code(argv) != 0
    err = capsys.readouterr().err
    assert "public start refused" in err and "normalised text" in err
    assert not any(text in err for text in texts)  # counts only, never a report
    assert mlflow.MlflowClient(tracking_uri).search_experiments(filter_string="name = 'radpriv-public'") == []


# ------------------------------------------------------------------ public validation

def test_public_thresholds_replace_the_private_validation_split(reports_csv):
    path = reports_csv[0]
    other = [*TINY, f"data.path={path}", "data.train_shard=1/2",
             f"finetune.public.data={{name:ct_rate_text,path:{path}}}"]
    private_val = set(build(compose(other)).dm.splits["val"].ids)
    built = build(compose([*other, "trainer.thresholds=public"]))
    table, dm = built.table, built.dm
    val = dm.splits["val"].ids
    assert val and all(i.startswith("public:") for i in val)
    assert not private_val & set(table.ids)  # the private validation reports are not used at all
    assert cfg_thresholds(["finetune.init_from=public"]) == "public"
    assert cfg_thresholds([]) == "validation"


def cfg_thresholds(overrides) -> str:
    return str(compose([*TINY, *overrides]).trainer.thresholds)


# ------------------------------------------------------------------ end to end

@pytest.mark.integration
def test_init_from_public_trains_the_public_model_once_and_records_the_start(tracking_uri, reports_csv,
                                                                             tmp_path, capsys):
    path = reports_csv[0]
    private = [*_public_start(path), "privacy.epsilon=3", "finetune.warm.interpolate=true"]
    first = _run(capsys, private)
    client = mlflow.MlflowClient(tracking_uri)
    [public_model] = client.search_registered_models()
    assert public_model.name == "radpriv-public-ct_rate18-tiny_bert"
    source = client.get_run(first["run_id"]).data.tags["radpriv.init_from"]
    public_run = client.get_run(source)
    assert public_run.data.params["privacy.epsilon"] == "None"
    assert public_run.data.params["data.train_shard"] == "0/2"  # the other half

    privacy = json.loads(Path(client.download_artifacts(first["run_id"], "privacy.json", str(tmp_path))).read_text())
    warm = privacy["warm_start"]
    assert warm["public"]["schema"] == "ct_rate18" and warm["public"]["same_dataset_complement_shard"]
    assert warm["public"]["overlap_guard"]["compared_by"] == "id"
    assert warm["labels_fresh"] == [] and len(warm["labels_from_source"]) == 18
    assert 0.0 <= warm["interpolation"]["lambda"] <= 1.0
    assert privacy["record_sets"]["validation"]["use"].startswith("none: the private validation reports")
    assert client.get_run(first["run_id"]).data.metrics["warm/lambda"] == warm["interpolation"]["lambda"]

    second = _run(capsys, [*private, "seed=42"])  # the same public model: found, not trained again
    assert client.get_run(second["run_id"]).data.tags["radpriv.init_from"] == source
    assert len(client.search_model_versions("name = 'radpriv-public-ct_rate18-tiny_bert'")) == 1


@pytest.mark.integration
def test_head_only_adaptation_freezes_the_encoder_and_caches_all_of_it(tracking_uri, reports_csv):
    cfg = compose([*_public_start(reports_csv[0]), "privacy.epsilon=3", "finetune.warm.trainable=head",
                   "finetune.warm.interpolate=true"])
    built = build(cfg)
    module, plan = built.module, built.plan
    trainable = [n for n, p in module.net.named_parameters() if p.requires_grad]
    assert trainable == ["head.weight", "head.bias"]
    layers = len(prefix_cache.base_encoder(module.net.encoder).encoder.layer)
    assert prefix_cache.frozen_prefix_layers(module.net.encoder, cfg.finetune) == layers
    # what trains is the head: interpolation moves the head and nothing else
    assert [p.shape for p in module.warm_source.params] == [module.net.head.weight.shape, module.net.head.bias.shape]
    assert plan is not None


def test_interpolation_goes_from_the_start_to_the_trained_weights():
    net = torch.nn.Linear(3, 2)
    source = WarmSource(net)
    start = [p.detach().clone() for p in net.parameters()]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    source.keep_trained()
    source.apply(0.0)
    for p, s in zip(net.parameters(), start):
        torch.testing.assert_close(p, s)
    source.apply(0.25)
    for p, s in zip(net.parameters(), start):
        torch.testing.assert_close(p, s + 0.25)
    assert best_lambda({0.0: 0.8, 0.5: 0.8, 1.0: 0.7}) == 0.5  # ties: more of the private data
    assert check_lambdas([1, 0.5, 0.5]) == [0.5, 1.0]
    with pytest.raises(ConfigError, match="lambdas"):
        check_lambdas([1.5])
    assert np.isclose(best_lambda({0.0: 0.1, 1.0: 0.9}), 1.0)


def test_a_complement_shard_is_every_other_shard(reports_csv):
    from radpriv.data.sources import load_table

    base = [*TINY, f"data.path={reports_csv[0]}"]
    train = lambda shard: {i for i, s in zip(*(lambda t: (t.ids, t.split))(  # noqa: E731
        load_table(compose([*base, f"data.train_shard='{shard}'"]).data, 42))) if s == "train"}
    assert train("~1/3") == train("0/3") | train("2/3")
    assert not train("~1/3") & train("1/3")


def test_a_lambda_above_zero_must_beat_the_public_start_on_resamples():
    from radpriv.model.interpolation import confident_lambda

    rng = np.random.default_rng(0)
    labels = (rng.random((300, 4)) < 0.3).astype(np.float32)
    start = np.where(rng.random(labels.shape) < 0.8, labels, 1 - labels).astype(np.int8)  # 80% right
    noisy = start.copy()
    wrong = np.flatnonzero((start != labels).any(1))[:2]
    noisy[wrong] = labels[wrong]  # two reports better: a win on the whole split, not on resamples
    better = np.where(rng.random(labels.shape) < 0.6, labels, start).astype(np.int8)  # clearly better
    lam, scores, wins = confident_lambda({0.0: start, 1.0: noisy}, labels, confidence=0.9)
    assert scores[1.0] > scores[0.0] and wins[1.0] < 0.9 and lam == 0.0
    lam, _, wins = confident_lambda({0.0: start, 0.5: better, 1.0: noisy}, labels, confidence=0.9)
    assert lam == 0.5 and wins[0.5] >= 0.9
    assert confident_lambda({0.0: start, 1.0: noisy}, labels, confidence=0.0)[0] == 1.0  # plain argmax


@pytest.mark.integration
def test_top_layers_trains_only_the_top_adapter_and_caches_below_it(tracking_uri, reports_csv):
    cfg = compose([*_public_start(reports_csv[0]), "privacy.epsilon=3", "finetune.layers_to_transform=null",
                   "finetune.warm.top_layers=1"])
    module = build(cfg).module
    encoder = [n for n, p in module.net.encoder.named_parameters() if p.requires_grad]
    layers = len(prefix_cache.base_encoder(module.net.encoder).encoder.layer)
    assert encoder and all(f"layer.{layers - 1}." in n for n in encoder)
    assert prefix_cache.frozen_prefix_layers(module.net.encoder, cfg.finetune) == layers - 1


@pytest.mark.integration
def test_labels_map_by_name_and_the_others_start_fresh(tracking_uri, reports_csv, tmp_path):
    from radpriv.model.bundle import load_bundle
    from radpriv.tracking.model_ref import local_bundle

    path = reports_csv[0]
    rows = list(csv.reader(path.open(encoding="utf-8")))
    header = rows[0]
    header[header.index("Emphysema")] = "Fresh finding"  # a label no public corpus has
    private = tmp_path / "other_site.csv"
    with private.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        for i, row in enumerate(rows[1:]):
            w.writerow([f"site_b_{i}", f"Other site. {row[1]}", *row[2:]])
    labels = ["Cardiomegaly", "Fresh finding", "Atelectasis"]
    cfg = compose([*TINY, "data=csv", f"data.path={private}", "data.text_column=report_text",
                   "data.id_column=AccessionNo", f"data.label_columns=[{','.join(labels)}]",
                   "privacy.epsilon=3", "finetune.init_from=public",
                   f"finetune.public.data={{name:ct_rate_text,path:{path}}}"])
    module = build(cfg).module
    warm = module.warm_start
    assert warm.labels_fresh == ("Fresh finding",)
    assert warm.labels_from_source == ("Cardiomegaly", "Atelectasis")
    assert warm.public["schema"] == "ct_rate18" and warm.public["overlap_guard"]["compared_by"] == "normalised text"
    source = load_bundle(local_bundle(warm.source, tracking_uri, tmp_path / "src").folder)
    for j, name in enumerate(labels):
        if name in source.label_names:
            torch.testing.assert_close(module.net.head.weight[j],
                                       source.net.head.weight[source.label_names.index(name)])


def test_warm_start_settings_do_not_change_a_cold_runs_key(tmp_path):
    from radpriv.tracking.release import PrivateFolder
    from radpriv.tracking.resume import run_keys

    folder = PrivateFolder(tmp_path)
    key = lambda *ov: run_keys(compose([*TINY, *ov]), "data", folder)  # noqa: E731
    assert key() == key("finetune.warm.trainable=head", "finetune.public.max_epochs=3")
    assert compose(TINY).trainer.thresholds == "validation"  # auto, resolved: the old default's key
    assert key("finetune.init_from=public") != key("finetune.init_from=public", "finetune.warm.trainable=head")


def test_an_openi_half_starts_from_the_other_half_and_nothing_of_it(real_data_dir, monkeypatch):
    from radpriv.data.overlap import check_no_overlap as guard
    from radpriv.data.sources import load_table
    from radpriv.model.public_start import load_public_corpus

    monkeypatch.setenv("RADPRIV_DATA_DIR", str(real_data_dir))
    cfg = compose(["data.train_shard=1/2", "finetune.init_from=public"])
    table = load_table(cfg.data, 42)
    corpus = load_public_corpus(cfg, table)
    assert corpus.choice.corpus.schema == "chexpert14" and corpus.same_dataset
    assert corpus.data_cfg.train_shard == "0/2"
    check = guard(table, corpus.table, same_dataset=True)  # shared normal templates are not overlap
    assert check.by == "id" and check.shared_wordings > 0
    # one public training report planted into the private training split is refused
    ids = list(table.ids)
    row = table.split.index("train")
    ids[row] = corpus.table.ids[corpus.table.split.index("train")]
    with pytest.raises(PrivacyError, match="1 of this run's"):
        guard(replace(table, ids=tuple(ids)), corpus.table, same_dataset=True)
    with pytest.raises(ConfigError, match="is the public corpus itself"):
        load_public_corpus(compose(["finetune.init_from=public"]), load_table(compose([]).data, 42))


def test_every_private_recipe_shares_one_public_model(reports_csv, tmp_path):
    from radpriv.data.sources import load_table
    from radpriv.model.public_start import load_public_corpus, public_run_cfg
    from radpriv.tracking.release import PrivateFolder
    from radpriv.tracking.resume import run_keys

    def public_key(*extra):
        cfg = compose([*_public_start(reports_csv[0]), *extra])
        corpus = load_public_corpus(cfg, load_table(cfg.data, 42))
        pub = public_run_cfg(cfg, corpus)
        assert pub.privacy.epsilon is None and pub.finetune.init_from is None
        return run_keys(pub, corpus.table.fingerprint(), PrivateFolder(tmp_path))

    base = public_key("privacy.epsilon=1")
    assert base == public_key("privacy.epsilon=0.1", "finetune.optimizer=sgd", "finetune.lr=2",
                              "privacy.max_grad_norm=0.01", "privacy.expected_batch_size=64",
                              "finetune.warm.trainable=head")
    assert base != public_key("privacy.epsilon=1", "finetune.r=4")  # another adapter: another model
