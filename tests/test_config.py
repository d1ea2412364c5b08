"""One source of defaults: the composed config is checked against radpriv/config_schema.py,
`--cfg job` prints exactly the config a command runs, and the data readers' library defaults
equal their YAML groups."""

from __future__ import annotations

import math

import pytest
import yaml
from omegaconf import OmegaConf

from radpriv.cli import main, run
from radpriv.config import CONF_DIR, compose, group_options
from radpriv.errors import ConfigError
from tests.helpers.cli import TINY, error_lines


@pytest.mark.parametrize("override, message", [
    ("privacy.epsilon=abc", "privacy.epsilon='abc'"),
    ("privacy.epsilon=-1", "privacy.epsilon=-1"),
    ("privacy.delta=1", "privacy.delta=1: must be < 1"),
    ("privacy.delta=1.5", "privacy.delta=1.5"),
    ("privacy.delta=-0.1", "privacy.delta=-0.1: must be > 0"),
    ("privacy.max_grad_norm=0", "privacy.max_grad_norm=0"),
    ("privacy.expected_batch_size=abc", "privacy.expected_batch_size='abc': must be an integer"),
    ("privacy.secure_mode=1", "privacy.secure_mode=1: must be true or false"),
    ("+privacy.epsilone=1", "privacy.epsilone: unknown key"),
    ("trainer.max_epochs=0", "trainer.max_epochs=0: must be ≥ 1"),
    ("trainer.thresholds=best", "trainer.thresholds='best': choose one of"),
    ("+trainer.max_epoch=3", "trainer.max_epoch: unknown key"),
    ("finetune.lr=-1", "finetune.lr=-1: must be > 0"),
    ("finetune.schedule=cosine", "finetune.schedule='cosine'"),
    ("finetune.r=x", "finetune.r='x': must be an integer"),
    ("+finetune.rank=4", "finetune.rank: unknown key"),
    # the nested finetune.public and finetune.warm mappings, key by key, named by their full key
    ("+finetune.warm.trainabel=head", "finetune.warm.trainabel: unknown key (known: confidence,"),
    ("+finetune.public.lrr=1", "finetune.public.lrr: unknown key (known: data, lr, max_epochs)"),
    ("finetune.public.max_epochs=abc", "finetune.public.max_epochs='abc': must be an integer"),
    ("finetune.warm.interpolate=yes", "finetune.warm.interpolate='yes': must be true or false"),
    ("finetune.public.data=openi", "finetune.public.data='openi': must be a mapping or null"),
    ("finetune.warm.confidence=2", "finetune.warm.confidence=2: must be ≤ 1"),
    ("finetune.public.lr=0", "finetune.public.lr=0: must be > 0"),
    ("finetune.public.max_epochs=0", "finetune.public.max_epochs=0: must be ≥ 1"),
    ("finetune.warm.top_layers=0", "finetune.warm.top_layers=0: must be ≥ 1"),
    ("finetune.warm.trainable=encoder", "finetune.warm.trainable='encoder': choose one of all, head"),
    ("finetune.warm.lambdas=[0,2]", "finetune.warm.lambdas=[0, 2]: expected a non-empty list of values in [0, 1]"),
    ("finetune.warm.lambdas=[]", "finetune.warm.lambdas=[]: expected a non-empty list"),
])
def test_a_bad_value_or_key_is_one_line_naming_the_key(override, message, capsys):
    with pytest.raises(ConfigError, match=None) as err:
        compose([override])
    assert message in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", override])
    assert exit_info.value.code == 2
    err_lines = error_lines(capsys.readouterr().err)
    assert len(err_lines) == 1 and message in err_lines[0]


@pytest.mark.parametrize("group, option", [(g, o) for g in ("data", "model", "finetune", "privacy", "trainer")
                                           for o in group_options(g) if o != "custom"])
def test_every_shipped_option_passes_the_schema(group, option):
    compose([f"{group}={option}"])


@pytest.mark.parametrize("extra", ["+tune=default", "+sweep=default", "+audit=default"])
def test_the_command_groups_compose(extra):
    compose([extra])


def test_a_key_missing_from_the_composed_config_is_an_error():
    from radpriv.config_schema import check_group

    privacy = OmegaConf.to_container(compose([]).privacy)
    del privacy["delta"]
    with pytest.raises(ConfigError, match="privacy.delta is missing"):
        check_group("privacy", privacy)
    lora = OmegaConf.to_container(compose(["finetune=lora"]).finetune)
    del lora["r"]  # a key of one mode only may be absent
    check_group("finetune", lora)


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_the_shipped_public_and_warm_settings_are_checked_key_by_key(mode):
    import dataclasses

    from radpriv.config_schema import PublicSchema, WarmSchema, check_group

    finetune = OmegaConf.to_container(compose([f"finetune={mode}"]).finetune)
    check_group("finetune", finetune)  # the shipped defaults pass
    for sub, schema in (("public", PublicSchema), ("warm", WarmSchema)):
        assert set(finetune[sub]) == {f.name for f in dataclasses.fields(schema)}
    finetune["warm"]["confidence"] = 2  # the same config with one nested value out of range
    with pytest.raises(ConfigError, match=r"^finetune\.warm\.confidence=2: must be ≤ 1$"):
        check_group("finetune", finetune)


def test_a_nested_typo_or_missing_key_in_a_conf_file_names_the_full_key():
    from radpriv.config_schema import check_group

    finetune = OmegaConf.to_container(compose([]).finetune)
    finetune["warm"]["trainabel"] = finetune["warm"].pop("trainable")  # as a typo in lora.yaml would
    with pytest.raises(ConfigError, match=r"^finetune\.warm\.trainabel: unknown key"):
        check_group("finetune", finetune)
    del finetune["warm"]["trainabel"]
    with pytest.raises(ConfigError, match=r"^finetune\.warm\.trainable is missing from the composed config "
                                          r"\(radpriv/conf/finetune/\*\.yaml"):
        check_group("finetune", finetune)
    del finetune["public"]["max_epochs"]
    finetune["warm"]["trainable"] = "all"
    with pytest.raises(ConfigError, match=r"^finetune\.public\.max_epochs is missing"):
        check_group("finetune", finetune)


def test_the_schema_holds_types_not_defaults():
    import dataclasses
    import typing

    from radpriv.config_schema import SCHEMAS

    schemas, seen = list(SCHEMAS.values()), []
    while schemas:  # the group schemas and every schema nested in them
        schema = schemas.pop()
        seen.append(schema)
        schemas += [t for t in typing.get_type_hints(schema).values() if dataclasses.is_dataclass(t)]
        for f in dataclasses.fields(schema):
            assert f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING, f.name
    assert len(seen) == len(SCHEMAS) + 2  # finetune.public and finetune.warm


def _printed_job(capsys, argv: list[str]) -> dict:
    assert run([*argv[:1], "--cfg", "job", *argv[1:]]) == 0
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("epsilon", ["0.1", "null"])
def test_cfg_job_prints_the_config_train_uses(epsilon, capsys, monkeypatch, reports_csv, tmp_path):
    monkeypatch.chdir(tmp_path)
    overrides = [*TINY, f"data.path={reports_csv[0]}", f"privacy.epsilon={epsilon}"]
    printed = _printed_job(capsys, ["train", *overrides])

    import radpriv.train

    class Built(Exception):
        pass

    used = {}

    def build(cfg, table=None):
        used["cfg"] = OmegaConf.to_container(cfg, resolve=True)
        raise Built

    monkeypatch.setattr(radpriv.train, "build", build)
    with pytest.raises(Built):
        run(["train", *overrides])
    assert printed == used["cfg"]
    # resolved, not the YAML's null/auto: the ε recipe, the thresholds and the precision
    assert printed["finetune"]["lr"] is not None
    assert (printed["privacy"]["max_grad_norm"] is None) == (epsilon == "null")  # no clipping without DP
    assert printed["trainer"]["thresholds"] == "validation"
    assert printed["trainer"]["precision"] in ("32-true", "bf16-mixed")
    assert (printed["privacy"]["epsilon"] is None) == (epsilon == "null")
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()


def test_cfg_job_of_the_other_commands(capsys):
    assert _printed_job(capsys, ["tune", "tune.n_trials=3"])["tune"]["n_trials"] == 3
    assert "sweep" in _printed_job(capsys, ["sweep"])
    assert _printed_job(capsys, ["audit", "privacy.epsilon=1"])["audit"]["canaries"] is not None
    assert _printed_job(capsys, ["data", "check", "data=ct_rate_text"])["data"]["name"] == "ct_rate_text"
    assert _printed_job(capsys, ["evaluate", "run_id=abc"])["run_id"] == "abc"
    # pate: the teachers' config, with the settings pate forces on them
    pate = _printed_job(capsys, ["pate", "data=ct_rate_text", "pate.k=2", "pate.sigma=5", "pate.input=u.csv",
                                 "pate.output=l.csv"])
    assert pate["privacy"]["epsilon"] is None and pate["trainer"]["thresholds"] == "fixed"
    assert run(["train", "--cfg=job", "privacy.epsilon=inf"]) == 0
    assert math.isinf(yaml.safe_load(capsys.readouterr().out)["privacy"]["recipe_by_epsilon"][0]["epsilon_at_least"])


def test_cfg_other_than_job_and_commands_without_a_config_are_one_line(capsys):
    for argv in (["train", "--cfg", "hydra"], ["predict", "--cfg", "job"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        assert len(error_lines(capsys.readouterr().err)) == 1


def test_conf_dir_is_the_one_source():
    assert (CONF_DIR / "config.yaml").is_file()


@pytest.mark.parametrize("module, name", [("openi", "openi"), ("ct_rate_text", "ct_rate_text"), ("ct_rate", "ct_rate"),
                                          ("mimic_cxr", "mimic_cxr"), ("generic_csv", "csv")])
def test_each_readers_defaults_are_its_yaml_group(module, name):
    """A reader called as a library with a partial dict fills the rest from DEFAULTS: the YAML group."""
    import importlib

    from radpriv.data.sources import SOURCES

    defaults = importlib.import_module(f"radpriv.data.{module}").DEFAULTS
    assert defaults == OmegaConf.to_container(compose([f"data={name}"]).data)
    assert SOURCES[name].__module__ == f"radpriv.data.{module}"
    assert set(SOURCES) == {"openi", "ct_rate_text", "ct_rate", "mimic_cxr", "csv"}
