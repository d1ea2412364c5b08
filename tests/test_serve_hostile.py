"""`radpriv serve` under hostile input: each bad request gets a clear 4xx that quotes no report,
and the server still answers the next valid request.

One tiny model (fp32, non-private, 1 epoch) is trained and served once for the module; every
request carries a marker string that must appear in no answer and nowhere in the server's log.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from radpriv.data.schemas import CT_RATE18
from radpriv.tracking.pyfunc import MAX_ROWS_PER_REQUEST
from tests.helpers.cli import TINY
from tests.helpers.serve import free_port, post_raw, server_env, start_radpriv_serve, stop, wait_until_ready
from tests.helpers.store import module_store

pytestmark = pytest.mark.integration  # make test-all (the integration tier)

MARKER = "PATIENTMARKER-0815"
REPORT = f"{MARKER}: small left pleural effusion, no pneumothorax."


def split(texts: list) -> bytes:
    return json.dumps({"dataframe_split": {"columns": ["text"], "data": [[t] for t in texts]}}).encode()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(run id, tracking uri, folder) of a tiny fp32 non-private model in a module-own store."""
    from radpriv.config import compose
    from radpriv.train import train

    with module_store(tmp_path_factory, "serve") as store:
        summary = train(compose([*TINY, f"data.path={store.csv}", "trainer.max_epochs=1",
                                 "trainer.precision=32-true", "privacy.epsilon=null"]))
    return summary["run_id"], store.uri, store.root


@pytest.fixture(scope="module")
def server(trained):
    """(base url, log path) of `radpriv serve <run id>`, one worker."""
    run_id, uri, root = trained
    port, log = free_port(), root / "serve.log"
    proc = start_radpriv_serve(run_id, port, log, server_env(uri), "precision=32-true", "timeout=120")
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_ready(proc, f"{base}/ping", log)
        yield base, log
    finally:
        stop(proc)


def assert_serves(base: str) -> None:
    status, body = post_raw(f"{base}/invocations", split([REPORT, "no acute cardiopulmonary findings"]))
    assert status == 200, body[:500]
    predictions = json.loads(body)["predictions"]
    assert len(predictions) == 2 and set(predictions[0]) == set(CT_RATE18)


HOSTILE = {
    "empty text": (split([REPORT, ""]), "application/json", 400, "row(s) 1: empty report text"),
    "missing text column": (json.dumps({"dataframe_split": {"columns": ["report"], "data": [[REPORT]]}}).encode(),
                            "application/json", 400, "no `text` column"),
    "1 MB report": (split([REPORT, REPORT * (1_000_000 // len(REPORT))]), "application/json", 400,
                    "row(s) 1: report longer than 50,000 characters"),
    "invalid UTF-8": (b'{"inputs": ["' + REPORT.encode() + b'\xff\xfe"]}', "application/json", 400,
                      "not valid UTF-8"),
    "invalid JSON": (b'{"inputs": ["' + REPORT.encode() + b'"', "application/json", 400, "not valid JSON"),
    f"{10 * MAX_ROWS_PER_REQUEST:,} rows": (split([REPORT] * (10 * MAX_ROWS_PER_REQUEST)), "application/json",
                                            400, "10,000 rows; at most 1,000"),
    "text/plain": (REPORT.encode(), "text/plain", 415, "content type 'text/plain' is not accepted"),
    "no input key": (json.dumps({"reports": [REPORT]}).encode(), "application/json", 400,
                     "not in a form the model accepts"),
    # MLflow's parsing would turn these into the reports "None" and "1.5" and score them
    "null report": (json.dumps({"inputs": [REPORT, None]}).encode(), "application/json", 400,
                    "row(s) 1: the report is not a string"),
    "a number as a report": (json.dumps({"instances": [1.5]}).encode(), "application/json", 400,
                             "row(s) 0: the report is not a string"),
    "bad batch_size": (json.dumps({"inputs": [REPORT], "params": {"batch_size": -1}}).encode(),
                       "application/json", 400, "batch_size must be a whole number"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_request_is_a_clear_4xx_and_the_next_request_is_served(server, case):
    base, _ = server
    body, content_type, expected_status, expected_message = HOSTILE[case]
    status, answer = post_raw(f"{base}/invocations", body, content_type)
    assert status == expected_status, answer[:500]
    assert expected_message in json.loads(answer)["message"]
    assert MARKER not in answer and "effusion" not in answer, "the answer quoted the request"
    assert_serves(base)


def test_a_body_over_the_limit_is_a_413(server):
    """One byte over MAX_BODY_BYTES: refused once the byte arrives (the server has read it all,
    so the answer is not cut off by a reset connection)."""
    from radpriv.serve import MAX_BODY_BYTES

    base, _ = server
    head, tail = b'{"inputs": ["' + REPORT.encode(), b'"]}'
    body = head + b"x" * (MAX_BODY_BYTES + 1 - len(head) - len(tail)) + tail
    status, answer = post_raw(f"{base}/invocations", body)
    assert status == 413, answer[:500]
    assert "over 100,000,000 bytes" in json.loads(answer)["message"] and MARKER not in answer
    assert_serves(base)


def test_the_server_log_holds_no_report_text(server):
    base, log = server
    for body, content_type, _, _ in HOSTILE.values():
        post_raw(f"{base}/invocations", body, content_type)
    assert_serves(base)
    text = Path(log).read_text()
    assert "refused a request (400)" in text
    assert MARKER not in text and "effusion" not in text


def test_a_bare_bundle_folder_is_served_by_two_workers(trained, tmp_path):
    """A model folder without an MLmodel file (a bundle copied out of its run) is wrapped as a
    pyfunc model; two workers each load it and both answer."""
    import shutil

    import mlflow

    run_id, uri, _ = trained
    local = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model", dst_path=str(tmp_path / "dl"),
                                                     tracking_uri=uri))
    bundle = shutil.copytree(next(local.rglob("radpriv_model.json")).parent, tmp_path / "bundle")
    port, log = free_port(), tmp_path / "serve.log"
    proc = start_radpriv_serve(str(bundle), port, log, server_env(uri), "workers=2", "precision=32-true")
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_ready(proc, f"{base}/ping", log)
        for _ in range(6):
            assert_serves(base)
        status, answer = post_raw(f"{base}/invocations", split([""]))
        assert status == 400 and "empty report text" in answer
    finally:
        stop(proc)
    assert "2 worker(s)" in log.read_text()
