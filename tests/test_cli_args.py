"""radpriv/cli_args.py: the one key=value parser of predict, label and pate."""

from __future__ import annotations

from pathlib import Path

import pytest

from radpriv import cli_args
from radpriv.errors import ConfigError, PrivacyError

KEYS = ("model", "input", "batch_size", "sigma", "progress_bar", "labels", "tracking_uri", "num_threads")


def test_values_aliases_and_blank_values():
    parsed = cli_args.parse(["model=runs:/abc/model", "input= a.csv ", "labels=", "tracking.uri=sqlite:///m.db",
                             "trainer.num_threads=2"], command="predict", keys=KEYS)
    # the value keeps its own "=" and ":" ("runs:/…"); blank means not given; aliases map to the key
    assert parsed.values == {"model": "runs:/abc/model", "input": "a.csv", "tracking_uri": "sqlite:///m.db",
                             "num_threads": "2"}
    assert "labels" not in parsed and parsed.rest == []
    assert cli_args.parse(["model=a=b"], command="x", keys=KEYS)["model"] == "a=b"


@pytest.mark.parametrize("arg", ["colour=red", "model", "=x", "trainer.precision=bf16-mixed"])
def test_unknown_keys_and_bare_words_are_one_line_listing_the_keys(arg):
    with pytest.raises(ConfigError) as info:
        cli_args.parse([arg], command="predict", keys=KEYS)
    message = str(info.value)
    assert message.startswith("predict: unexpected argument") and repr(arg) in message
    assert "model, input, batch_size" in message and len(message.splitlines()) == 1


def test_missing_required_keys_are_named_together_with_the_example():
    with pytest.raises(ConfigError, match=r"predict needs input=<…> batch_size=<…>, e\.g\. radpriv predict"):
        cli_args.parse(["model=m"], command="predict", keys=KEYS, required=("model", "input", "batch_size"),
                       example="radpriv predict …")


def test_a_prefix_leaves_the_rest_to_hydra_in_order():
    parsed = cli_args.parse(["data=ct_rate_text", "pate.sigma=3", "trainer.max_epochs=1", "pate.model=m"],
                            command="pate", keys=KEYS, prefix="pate.", rest_allowed=True)
    assert parsed.values == {"sigma": "3", "model": "m"}
    assert parsed.rest == ["data=ct_rate_text", "trainer.max_epochs=1"]
    with pytest.raises(ConfigError, match=r"pate: unexpected argument 'pate\.bogus=1'.*pate\.model"):
        cli_args.parse(["pate.bogus=1"], command="pate", keys=KEYS, prefix="pate.", rest_allowed=True)
    with pytest.raises(ConfigError, match="unexpected argument 'data=x'"):
        cli_args.parse(["data=x"], command="pate", keys=KEYS, prefix="pate.")


def test_numbers_booleans_and_lists():
    parsed = cli_args.parse(["batch_size=8", "sigma=2.5", "progress_bar=False", "labels= a, ,b "],
                            command="predict", keys=KEYS)
    assert cli_args.whole_number(parsed, "batch_size", 32) == 8
    assert cli_args.whole_number(parsed, "num_threads", None) is None
    assert cli_args.real_number(parsed, "sigma", None) == 2.5
    assert cli_args.boolean(parsed, "progress_bar", True) is False
    assert cli_args.boolean(parsed, "model", True) is True
    assert cli_args.comma_list(parsed.get("labels")) == ["a", "b"]
    assert cli_args.comma_list(None) is None


@pytest.mark.parametrize("arg, read, message", [
    ("batch_size=0", lambda p: cli_args.whole_number(p, "batch_size", 32),
     "batch_size=.0.: expected a whole number ≥ 1"),
    ("batch_size=2.5", lambda p: cli_args.whole_number(p, "batch_size", 32), "expected a whole number"),
    ("batch_size=1", lambda p: cli_args.whole_number(p, "batch_size", 32, low=2), "≥ 2"),
    ("batch_size=65", lambda p: cli_args.whole_number(p, "batch_size", 32, 1, 64),
     "batch_size='65': expected a whole number from 1 to 64"),
    ("sigma=nan", lambda p: cli_args.real_number(p, "sigma", None), "sigma='nan': expected a number ≥ 0"),
    ("sigma=-1", lambda p: cli_args.real_number(p, "sigma", None), "expected a number ≥ 0"),
    ("sigma=inf", lambda p: cli_args.real_number(p, "sigma", None), "expected a number"),
    ("progress_bar=maybe", lambda p: cli_args.boolean(p, "progress_bar", True), "expected true or false"),
])
def test_bad_values_name_the_key_and_what_was_expected(arg, read, message):
    parsed = cli_args.parse([arg], command="predict", keys=KEYS)
    with pytest.raises(ConfigError, match=message):
        read(parsed)


def test_a_prefixed_key_is_named_with_its_prefix():
    parsed = cli_args.parse(["pate.batch_size=0"], command="pate", keys=KEYS, prefix="pate.", rest_allowed=True)
    with pytest.raises(ConfigError, match=r"^pate\.batch_size='0'"):
        cli_args.whole_number(parsed, "batch_size", 32)


def test_predict_label_and_pate_parse_through_it():
    from radpriv import predict
    from radpriv.teacher import label, pate

    p = predict.parse_args(["model=m", "input=in.csv", "output=out.csv", "text_column=a,b", "batch_size=4",
                            "labels=chexpert14", "progress_bar=0", "tracking.uri=file:x"])
    assert (p.model, p.input, p.output, p.text_columns, p.batch_size, p.progress_bar, p.tracking_uri) == (
        "m", Path("in.csv"), Path("out.csv"), ["a", "b"], 4, False, "file:x")
    assert len(p.labels) == 14
    t = label.parse_args(["teacher=m", "input=in.csv", "output=out.csv", "teacher.mode=single"])
    assert (t.teacher, t.batch_size, t.labels) == ("m", 32, None)
    with pytest.raises(ConfigError, match="label: unexpected argument 'model=m'"):
        label.parse_args(["model=m", "input=in.csv", "output=out.csv"])
    with pytest.raises(ConfigError, match="teacher.mode='other'"):
        label.parse_args(["teacher=m", "input=in.csv", "output=out.csv", "teacher.mode=other"])
    options, overrides = pate.parse_args(["pate.k=3", "pate.sigma=2", "pate.input=i.csv", "pate.output=o.csv",
                                          "data=ct_rate_text", "privacy.epsilon=null"])
    assert (options.k, options.sigma, options.seed, options.batch_size) == (3, 2.0, None, 32)
    assert overrides == ["data=ct_rate_text"]  # FORCED settings are the command's own
    with pytest.raises(PrivacyError, match="fixed"):
        pate.parse_args(["pate.k=3", "pate.sigma=2", "pate.input=i", "pate.output=o", "trainer.thresholds=dp"])
