"""The pyfunc model's request checks: what a scoring request may hold, and refusals that never
quote a report (no model is loaded; predict_proba is replaced by a stand-in)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from radpriv.errors import RadprivError, RequestError
from radpriv.tracking import pyfunc
from radpriv.tracking.pyfunc import (
    MAX_REPORT_CHARS,
    MAX_ROWS_PER_REQUEST,
    RadprivClassifierModel,
    check_batch_size,
    check_texts,
)

SECRET = "PATIENTNAME-4711 right lower lobe nodule"  # must never appear in an error message


@pytest.fixture
def model(monkeypatch):
    """The pyfunc model around a stand-in bundle: two labels, probability 0.5 for every row."""
    calls = []

    def fake_predict_proba(bundle, texts, batch_size=64):
        calls.append((list(texts), batch_size))
        return torch.full((len(texts), 2), 0.5)

    monkeypatch.setattr("radpriv.model.bundle.predict_proba", fake_predict_proba)
    m = RadprivClassifierModel()
    m.model = type("Bundle", (), {"label_names": ["a", "b"]})()
    m.calls = calls
    return m


def test_valid_requests_pass_through(model):
    out = model.predict(None, pd.DataFrame({"text": [SECRET, "no acute findings"]}), {"batch_size": 8})
    assert list(out.columns) == ["a", "b"] and len(out) == 2
    assert model.calls == [([SECRET, "no acute findings"], 8)]
    assert len(model.predict(None, ["one report"])) == 1  # a plain list of strings
    # the limits themselves are allowed
    assert check_texts(["x" * MAX_REPORT_CHARS]) and len(check_texts(["x"] * MAX_ROWS_PER_REQUEST)) == 1000
    assert check_batch_size(None) == 64 and check_batch_size({"batch_size": MAX_ROWS_PER_REQUEST}) == 1000


@pytest.mark.parametrize(("frame", "expected"), [
    (pd.DataFrame({"text": [SECRET, ""]}), "row(s) 1: empty report text"),
    (pd.DataFrame({"text": [SECRET, "  \n "]}), "row(s) 1: empty report text"),
    (pd.DataFrame({"text": [SECRET, None]}), "row(s) 1: the report is not a string"),
    (pd.DataFrame({"report": [SECRET]}), "no `text` column"),
    (pd.DataFrame({"text": []}), "no rows"),
    (pd.DataFrame({"text": [SECRET] * (MAX_ROWS_PER_REQUEST + 1)}), "1,001 rows; at most 1,000"),
    (pd.DataFrame({"text": [SECRET, SECRET * 2000]}), "row(s) 1: report longer than 50,000"),
    (pd.DataFrame({"text": [""] * 7}), "row(s) 0, 1, 2, 3, 4 and 2 more"),
])
def test_bad_requests_are_refused_without_quoting_a_report(model, frame, expected):
    with pytest.raises(RequestError) as info:
        model.predict(None, frame)
    message = str(info.value)
    assert expected in message
    assert "PATIENTNAME" not in message and "nodule" not in message
    assert model.calls == []  # refused before any tokenising
    assert isinstance(info.value, RadprivError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("value", [0, -1, MAX_ROWS_PER_REQUEST + 1, 2.5, "many", None, [4]])
def test_batch_size_must_be_a_whole_number_in_range(model, value):
    with pytest.raises(RequestError, match="batch_size must be a whole number from 1 to 1,000"):
        model.predict(None, pd.DataFrame({"text": ["a report"]}), {"batch_size": value})


def test_a_single_string_is_not_a_list_of_reports():
    with pytest.raises(RequestError, match="single value"):
        pyfunc.texts_of(SECRET)


# --------------------------------------------------------------------------- radpriv serve's answers

def test_mlflow_own_json_error_quotes_the_request_so_serve_answers_its_own():
    """MLflow's message for a body that is not JSON holds the whole body; `radpriv serve` passes
    on none of MLflow's messages (radpriv/serve.py `explain`)."""
    from mlflow.pyfunc.scoring_server import _decode_json_input

    from radpriv.serve import explain

    with pytest.raises(Exception) as info:
        _decode_json_input(b'{"inputs": ["' + SECRET.encode() + b'"')
    assert SECRET in str(info.value)  # if MLflow stops echoing, this documents the change
    status, message = explain(info.value)
    assert status == 400 and "not valid JSON" in message and SECRET not in message


def test_a_request_error_is_answered_with_its_own_message():
    from mlflow.exceptions import MlflowException

    from radpriv.serve import explain

    # MLflow's scoring server re-raises a model's exception as an MlflowException quoting the data
    wrapped = MlflowException(f"Failed to predict data '{SECRET}'")
    wrapped.__context__ = RequestError("row(s) 3: empty report text")
    assert explain(wrapped) == (400, "row(s) 3: empty report text")
    assert explain(MlflowException(f"Failed to predict data '{SECRET}'. Model is missing inputs ['text']"))[1] \
        .startswith("the request has no `text` column")
    status, message = explain(KeyError(SECRET))
    assert status == 500 and SECRET not in message


JSON_FORMS = {  # body → the text rows serve reads from it before MLflow parses it
    '{"inputs": ["a", null]}': ["a", None],
    '{"instances": [1.5]}': [1.5],
    '{"inputs": {"text": ["a", null]}}': ["a", None],
    '{"inputs": [{"text": "a"}, {"text": null}, {}]}': ["a", None, None],
    '{"dataframe_split": {"columns": ["id", "text"], "data": [[1, "a"], [2, null], [3]]}}': ["a", None, None],
    '{"dataframe_records": [{"text": "a"}, {"text": null}]}': ["a", None],
    # not JSON, or no text rows named: MLflow's parser answers (invalid JSON, no `text` column)
    '{"inputs": ["a"': None, '[1, 2]': None, '{"reports": ["a"]}': None, '{"inputs": [["a", "b"]]}': None,
    '{"dataframe_records": [{"report": "a"}]}': None,
    '{"dataframe_split": {"columns": ["report"], "data": [["a"]]}}': None,
}


@pytest.mark.parametrize("body", list(JSON_FORMS))
def test_the_text_rows_of_each_json_form_are_read_as_sent(body):
    from radpriv.serve import json_texts

    assert json_texts(body.encode()) == JSON_FORMS[body]
    assert json_texts(b'{"inputs": ["' + SECRET.encode() + b'\xff"]}') is None  # not UTF-8: MLflow refuses it


def test_a_null_or_a_number_sent_as_a_report_is_refused_where_mlflow_would_score_it():
    """MLflow parses {"inputs": [null]} into the report "None" under the model's string signature;
    serve checks the rows as sent, with the model's own check and message."""
    from radpriv.serve import json_texts

    for body, row in [({"inputs": [SECRET, None]}, "1"), ({"instances": [2.5]}, "0"),
                      ({"dataframe_records": [{"text": SECRET}, {"text": None}]}, "1")]:
        with pytest.raises(RequestError, match=rf"row\(s\) {row}: the report is not a string") as info:
            check_texts(json_texts(json.dumps(body).encode()))
        assert SECRET not in str(info.value)


def test_serve_arguments():
    from radpriv.errors import ConfigError
    from radpriv.serve import parse_args

    o = parse_args(["models:/ct@champion", "workers=2", "port=6000", "precision=bf16-mixed"])
    assert (o.model, o.workers, o.port, o.host, o.timeout, o.precision) == \
        ("models:/ct@champion", 2, 6000, "127.0.0.1", 60, "bf16-mixed")
    assert parse_args(["model=abc"]).model == "abc"
    for bad, says in [([], "needs a model reference"), (["m", "workers=0"], "workers='0'"),
                      (["m", "port=http"], "port='http'"), (["m", "colour=red"], "unexpected argument"),
                      (["m", "n"], "unexpected argument"), (["m", "precision=fp8"], "precision='fp8'")]:
        with pytest.raises(ConfigError, match=says):
            parse_args(bad)


def test_a_port_in_use_is_one_config_error():
    import socket

    from radpriv.errors import ConfigError
    from radpriv.serve import check_port_free

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(ConfigError, match=r"port=\d+: cannot listen there"):
            check_port_free("127.0.0.1", s.getsockname()[1])
