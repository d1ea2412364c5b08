"""The recipe (issue 10): one set of defaults, used by every entry point; thresholds from
validation only."""

from __future__ import annotations

import csv
import importlib.util
import math
import shlex
from pathlib import Path

import numpy as np
import yaml
from omegaconf import OmegaConf

from radpriv.config import CONF_DIR, compose
from radpriv.data.sources import load_table
from radpriv.model.bundle import load_bundle, predict_proba
from radpriv.model.metrics import fit_thresholds
from radpriv.tracking.model_ref import local_bundle
from tests.helpers.cli import TINY, train_json

ROOT = Path(__file__).resolve().parents[1]


def _conf(group: str, name: str) -> dict:
    return yaml.safe_load((CONF_DIR / group / f"{name}.yaml").read_text())


def test_defaults_are_the_recipe_files():
    """`radpriv train` with nothing overridden: MiniLM, LoRA, DP, exactly the conf files' values,
    with the clipping norm and learning rate the files leave null taken from the ε row."""
    cfg = OmegaConf.to_container(compose([]), resolve=True)
    assert cfg["model"]["name"] == "minilm" and cfg["data"]["name"] == "openi"
    finetune, privacy = _conf("finetune", "lora"), _conf("privacy", "dp")
    assert finetune["lr"] is None and privacy["max_grad_norm"] is None
    (row,) = [r for r in privacy["recipe_by_epsilon"] if r["epsilon_at_least"] <= privacy["epsilon"]][:1]
    assert cfg["finetune"] == {**finetune, "lr": row["lr"]}
    assert cfg["privacy"] == {**privacy, "max_grad_norm": row["max_grad_norm"]}
    # thresholds and precision `auto` resolve at compose time: validation for a cold start; bf16
    # where this machine's CPU computes it natively
    from radpriv.model.precision import resolve_precision

    assert _conf("trainer", "cpu")["thresholds"] == "auto" and _conf("trainer", "cpu")["precision"] == "auto"
    assert cfg["trainer"] == {**_conf("trainer", "cpu"), "thresholds": "validation",
                              "precision": resolve_precision("auto", "cpu")}


def test_clipping_norm_and_lr_follow_epsilon_unless_set():
    """The ε rows: the run's ε picks C and lr; a value given on the command line (or by a conf
    file, as finetune=full's lr) is never replaced; non-private LoRA keeps lr 1e-2, no C."""
    rows = _conf("privacy", "dp")["recipe_by_epsilon"]
    low, high = rows[-1], rows[-2]
    assert high["max_grad_norm"] > low["max_grad_norm"]  # less noise, clip less (RESULTS.md)

    def c_lr(*ov):
        cfg = compose(list(ov))
        return cfg.privacy.max_grad_norm, cfg.finetune.lr

    assert c_lr("privacy.epsilon=10") == (high["max_grad_norm"], high["lr"])
    assert c_lr(f"privacy.epsilon={high['epsilon_at_least']}") == (high["max_grad_norm"], high["lr"])
    assert c_lr("privacy.epsilon=1") == c_lr("privacy.epsilon=0.1") == (low["max_grad_norm"], low["lr"])
    assert c_lr("privacy.epsilon=10", "privacy.max_grad_norm=0.2") == (0.2, high["lr"])
    assert c_lr("privacy.epsilon=10", "finetune.lr=0.003") == (high["max_grad_norm"], 0.003)
    assert c_lr("privacy.epsilon=null") == c_lr("privacy=none") == (None, 1e-2)
    assert compose(["finetune=full", "privacy.epsilon=10"]).finetune.lr == _conf("finetune", "full")["lr"]


def test_mlflow_run_with_default_parameters_trains_the_same_recipe():
    """`mlflow run .` renders MLproject's command; with its defaults it must compose to the same
    config as a bare `radpriv train` (the MLproject must not carry a second recipe)."""
    spec = importlib.util.spec_from_file_location("pipeline_train", ROOT / "pipelines" / "train.py")
    pipeline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pipeline)
    main = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]["main"]
    params = {k: str(v["default"]) for k, v in main["parameters"].items()}
    command = " ".join(main["command"].split())
    for key, value in params.items():
        command = command.replace("{" + key + "}", shlex.quote(value))
    args = shlex.split(command)[2:]  # drop `python pipelines/train.py`
    overrides = pipeline.mlproject_overrides(args)
    assert compose(overrides) == compose([])


def _write_with_test_labels_flipped(src: Path, dst: Path, test_ids: set[str]) -> None:
    rows = list(csv.reader(src.open(encoding="utf-8")))
    with dst.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(rows[0])
        for row in rows[1:]:
            if row[0] in test_ids:
                row = row[:2] + [str(1 - int(v)) for v in row[2:]]
            w.writerow(row)


def test_thresholds_are_fitted_on_validation_reports_only(tracking_uri, reports_csv, capsys, tmp_path):
    path = reports_csv[0]
    base = [*TINY, "privacy.epsilon=null", "finetune.lr=0.05"]
    table = load_table(compose([*base, f"data.path={path}"]).data, 42)
    val = table.subset("val")
    out, _ = train_json(capsys, [*base, f"data.path={path}"])
    model = load_bundle(local_bundle(out["run_id"], tracking_uri, tmp_path / "a").folder)
    # the stored thresholds are exactly the F1-optimal ones on the validation split
    expected = fit_thresholds(predict_proba(model, val.texts).numpy(), val.labels)
    np.testing.assert_allclose(model.thresholds, expected)
    assert len(set(model.thresholds)) > 1  # tuned, not all left at 0.5

    # the same training with every test label flipped stores the same thresholds
    flipped = tmp_path / "flipped.csv"
    _write_with_test_labels_flipped(path, flipped, set(table.subset("test").ids))
    out2, _ = train_json(capsys, [*base, f"data.path={flipped}"])
    model2 = load_bundle(local_bundle(out2["run_id"], tracking_uri, tmp_path / "b").folder)
    assert model2.thresholds == model.thresholds
    assert out2["metrics"]["test/f1_weighted"] != out["metrics"]["test/f1_weighted"]


def test_label_name_head_init_is_the_centred_label_embeddings():
    import torch

    from radpriv.errors import ConfigError
    from radpriv.model.head_init import init_head_from_label_names, label_name_directions
    from tests.helpers.dp import LORA, tiny_net

    names = ["Pleural_Effusion", "cardiomegaly", "fracture"]
    net, tok = tiny_net("tiny_bert", {**LORA, "normalize_pooled": True}, num_labels=3)
    init_head_from_label_names(net, tok, names, scale=7.0)
    directions = label_name_directions(net.encoder, tok, names)
    torch.testing.assert_close(net.head.weight, 7.0 * directions)
    torch.testing.assert_close(directions.sum(0), torch.zeros(directions.shape[1]), atol=1e-5, rtol=0)
    # a different name gives a different row: the rows come from the names, not a constant
    net2, _ = tiny_net("tiny_bert", {**LORA, "normalize_pooled": True}, num_labels=3)
    init_head_from_label_names(net2, tok, ["atelectasis", *names[1:]], scale=7.0)
    assert not torch.allclose(net2.head.weight[0], net.head.weight[0])
    plain, _ = tiny_net("tiny_bert", LORA, num_labels=3)
    with __import__("pytest").raises(ConfigError, match="normalize_pooled"):
        init_head_from_label_names(plain, tok, names, scale=7.0)


def test_every_mlproject_entry_point_composes_with_its_defaults():
    """A typo in an entry point's command (a key that does not exist) fails here, not in a user's
    `mlflow run . -e <entry>`."""
    spec = importlib.util.spec_from_file_location("pipeline_train", ROOT / "pipelines" / "train.py")
    pipeline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pipeline)
    from radpriv.cli import COMMANDS

    prefixes = {"train.py": [], "audit.py": ["+audit=default"], "tune.py": ["+tune=default"],
                "sweep.py": ["+sweep=default"]}
    entries = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]
    for name, entry in entries.items():
        command = " ".join(entry["command"].split())
        for key, value in entry["parameters"].items():
            # a required parameter (no default) gets a placeholder: only the wiring is checked
            command = command.replace("{" + key + "}", shlex.quote(str(value.get("default", "x"))))
        script, *args = shlex.split(command)[1:]
        if script == "-m":  # `python -m radpriv.cli <command> key=value …`: its own parser
            assert args[0] == "radpriv.cli" and args[1] in COMMANDS, name
            continue
        assert (ROOT / script).is_file(), name
        prefix = prefixes.get(Path(script).name)
        if prefix is None:
            continue  # entry points of other commands are checked by their own tests
        compose([*prefix, *pipeline.mlproject_overrides(args)])


def test_nonprivate_batch_is_halved_until_an_epoch_has_enough_steps():
    """Open-i (2,609 training reports) keeps the DP batch of 256; ct_rate_text (560) trains
    non-privately at 32, the batch measured in docs/RESULTS.md ("The CT probe")."""
    from radpriv.errors import ConfigError
    from radpriv.privacy.plan import nonprivate_batch_size

    assert nonprivate_batch_size(2609, 256, 10) == 256
    assert nonprivate_batch_size(560, 256, 10) == 32
    assert nonprivate_batch_size(560, 256, None) == 256
    assert nonprivate_batch_size(3, 256, 10) == 1
    try:
        nonprivate_batch_size(560, 256, 0)
    except ConfigError as e:
        assert "nonprivate_min_steps_per_epoch" in str(e)
    else:
        raise AssertionError("0 steps per epoch accepted")


def test_only_nonprivate_training_uses_the_smaller_batch(tmp_path):
    """build(): the DP plan keeps its configured batch (its q and σ were calibrated for it); a
    non-private run on the same data halves it until an epoch has the configured steps."""
    from radpriv.train import build
    from tests.synthetic import synthetic_table

    table = synthetic_table(n=80)
    base = ["model=tiny_bert", "data.max_length=32", "privacy.expected_batch_size=32",
            "privacy.max_physical_batch_size=8", "privacy.nonprivate_min_steps_per_epoch=4"]
    built = build(compose(base + ["privacy.epsilon=1"]), table)
    dm, plan = built.dm, built.plan
    assert plan is not None and dm.batch_size == 32 and plan.expected_batch_size == 32
    built = build(compose(base + ["privacy.epsilon=null"]), table)
    dm, plan = built.dm, built.plan
    assert plan is None and dm.batch_size < 32 and dm.steps_per_epoch >= 4
    assert math.ceil(dm.num_train / (2 * dm.batch_size)) < 4  # the largest halving that gives 4 steps


def test_full_fine_tuning_has_its_own_nonprivate_batch_and_dp_keeps_the_calibrated_one():
    """finetune=full trains non-privately at its own batch (32, the usual BERT fine-tuning
    batch); under DP the batch is privacy.expected_batch_size whatever the mode says."""
    from radpriv.errors import ConfigError
    from radpriv.train import build
    from tests.synthetic import synthetic_table

    assert _conf("finetune", "full")["nonprivate_batch_size"] == 32
    assert "nonprivate_batch_size" not in _conf("finetune", "lora")  # absent: no change to LoRA run keys
    table = synthetic_table(n=200)
    base = ["model=tiny_bert", "data.max_length=32", "finetune=full", "privacy.expected_batch_size=64",
            "privacy.max_physical_batch_size=8", "privacy.nonprivate_min_steps_per_epoch=1"]
    built = build(compose(base + ["privacy.epsilon=null"]), table)
    dm, plan = built.dm, built.plan
    assert plan is None and dm.batch_size == 32
    dm = build(compose(base + ["privacy.epsilon=null", "finetune.nonprivate_batch_size=8"]), table).dm
    assert dm.batch_size == 8
    built = build(compose(base + ["privacy.epsilon=1"]), table)
    dm, plan = built.dm, built.plan
    assert plan is not None and dm.batch_size == 64 and plan.expected_batch_size == 64
    try:
        build(compose(base + ["privacy.epsilon=null", "finetune.nonprivate_batch_size=0"]), table)
    except ConfigError as e:
        assert "finetune.nonprivate_batch_size" in str(e)
    else:
        raise AssertionError("a batch of 0 accepted")


def test_full_fine_tuning_trains_its_fresh_head_at_the_lora_rate_and_the_encoder_at_5e_5():
    """A random head at the encoder's 5e-5 barely moves in a few hundred steps (docs/RESULTS.md,
    "Full fine-tuning's head"): the optimizer gives the head 1e-2, the encoder 5e-5."""
    from radpriv.train import build
    from tests.synthetic import synthetic_table

    cfg = compose(["model=tiny_bert", "data.max_length=32", "finetune=full", "privacy.epsilon=null"])
    module = build(cfg, synthetic_table(n=60)).module
    body, head = module.configure_optimizers()["optimizer"].param_groups
    # initial_lr: the warm-up has already scaled "lr" down
    assert math.isclose(body["initial_lr"], 5e-5) and math.isclose(head["initial_lr"], 1e-2)
    head_ids = {id(p) for p in head["params"]}
    assert head_ids and all(id(p) not in head_ids for p in body["params"])
    assert compose(["finetune=full"]).finetune.head_bias_init == compose([]).finetune.head_bias_init == -2.0
