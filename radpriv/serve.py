"""`radpriv serve <model-ref> [workers=1 port=5001 host=127.0.0.1 timeout=60 precision=auto]`.

Serves a trained model over HTTP with MLflow's scoring server: `POST /invocations` takes MLflow's
scoring protocol (JSON `{"dataframe_split": {"columns": ["text"], "data": [[...], ...]}}`, JSON
`{"inputs": [...]}`, or CSV with a `text` column) and answers per-label probabilities; `GET /ping`
answers 200 once the model is loaded. The reference is anything `radpriv predict` takes (run id,
runs:/, models:/, a model folder), resolved by radpriv/tracking/model_ref.py.

It is MLflow's own app (`mlflow.pyfunc.scoring_server.init`: ping, version, the request timeout,
the request parsing) run by uvicorn with N worker processes, with `/invocations` answered by a
thin wrapper because MLflow's error answers quote the request: an invalid JSON body is echoed
whole, and a schema error prints the parsed DataFrame. The wrapper answers refusals with its
own messages, which name rows, limits and formats, never report text:

    400  a RequestError from the model's checks (radpriv/tracking/pyfunc.py: rows, report length,
         empty or null text, batch_size; a JSON body's rows are checked before MLflow parses
         them, since its parsing turns a null report into the string "None"), a body that is
         not UTF-8 or not JSON, a request without a `text` column, or any other request MLflow
         cannot parse
    413  a body over MAX_BODY_BYTES (read no further)
    415  a content type other than JSON, CSV or Parquet (or a charset other than UTF-8)
    500  an unexpected failure (logged by exception type only)
    504  a request that ran past timeout= seconds (MLflow's middleware)

The server binds to 127.0.0.1 unless host= says otherwise: it has no authentication and no TLS,
so anything wider belongs behind a proxy that adds them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request  # module level: FastAPI resolves the handler's annotation here

from radpriv import cli_args, labelling
from radpriv.errors import ConfigError, RequestError

log = logging.getLogger(__name__)

KEYS = ("model", "workers", "port", "host", "timeout", "precision", "tracking_uri")
# the pyfunc model folder and thread count each worker process reads (uvicorn imports the app by name)
MODEL_ENV = "RADPRIV_SERVE_MODEL"
THREADS_ENV = "RADPRIV_SERVE_THREADS"
# the largest valid request (1,000 reports of 50,000 characters) as JSON, with room for escapes
MAX_BODY_BYTES = 100_000_000
ACCEPTED = ("application/json", "text/csv", "application/vnd.apache.parquet")
FORMATS = ('send JSON {"dataframe_split": {"columns": ["text"], "data": [["<report>"], ...]}} or '
           '{"inputs": ["<report>", ...]}, or CSV with a text column; one report per row')
EXAMPLE = "radpriv serve models:/chexpert@champion workers=2 port=5001"


@dataclass
class ServeOptions:
    model: str
    workers: int = 1
    port: int = 5001
    host: str = "127.0.0.1"
    timeout: int = 60
    precision: str | None = None  # None: $RADPRIV_PRECISION, else auto
    tracking_uri: str | None = None


def parse_args(args: Sequence[str]) -> ServeOptions:
    """The model reference (the first argument without `=`, or model=) and key=value options
    (radpriv/cli_args.py)."""
    args = list(args)
    bare = next((i for i, arg in enumerate(args) if "=" not in arg), None)
    if bare is not None and not any(arg.partition("=")[0].strip() == "model" for arg in args[:bare]):
        args[bare] = f"model={args[bare]}"  # `radpriv serve <ref> ...`
    parsed = cli_args.parse(args, command="serve", keys=KEYS)
    if "model" not in parsed:
        raise ConfigError(f"serve needs a model reference (run id, runs:/…, models:/… or a folder), e.g. {EXAMPLE}")
    return ServeOptions(model=parsed["model"], workers=cli_args.whole_number(parsed, "workers", 1, 1, 64),
                        port=cli_args.whole_number(parsed, "port", 5001, 1, 65535),
                        host=parsed.get("host", "127.0.0.1"),
                        timeout=cli_args.whole_number(parsed, "timeout", 60, 1, 86400),
                        precision=labelling.precision_option(parsed.get("precision")),
                        tracking_uri=parsed.get("tracking_uri"))


def pyfunc_dir(bundle_folder: Path, dst: Path) -> Path:
    """The pyfunc model folder a bundle came in (`<model>/artifacts/<bundle>` beside an MLmodel
    file), else a pyfunc model saved around it under `dst`."""
    model = bundle_folder.parent.parent
    if bundle_folder.parent.name == "artifacts" and (model / "MLmodel").is_file():
        return model
    from radpriv.tracking.pyfunc import save_pyfunc

    return save_pyfunc(bundle_folder, dst)


def check_port_free(host: str, port: int) -> None:
    """A ConfigError now, rather than uvicorn's exit after the model has loaded, when the address
    cannot be bound (in use, or not an address of this machine)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(infos[0][4])
    except OSError as e:
        raise ConfigError(f"host={host} port={port}: cannot listen there ({e.strerror or e}); "
                          "choose another port= (or host=)") from None


def serve(options: ServeOptions) -> int:
    """Resolve the model, then run the server until it is stopped (Ctrl-C, SIGTERM)."""
    import uvicorn

    from radpriv.tracking import registry
    from radpriv.tracking.model_ref import local_bundle, privacy_facts

    check_port_free(options.host, options.port)
    with tempfile.TemporaryDirectory(prefix="radpriv-serve-") as tmp:
        source = local_bundle(options.model, options.tracking_uri, Path(tmp) / "model")
        log.info("model %s: %s", source.display, registry.describe_facts(privacy_facts(source, options.tracking_uri)))
        os.environ[MODEL_ENV] = str(pyfunc_dir(source.folder, Path(tmp) / "pyfunc"))
        os.environ["MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT"] = str(options.timeout)
        # the cores shared out between the workers, so N workers do not each start a thread per core
        os.environ[THREADS_ENV] = str(max(1, (os.cpu_count() or 1) // options.workers))
        if options.precision:
            os.environ["RADPRIV_PRECISION"] = options.precision
        if options.host not in ("127.0.0.1", "localhost", "::1"):
            log.warning("host=%s: the server has no authentication and no TLS; put it behind a proxy "
                        "that adds both before other machines reach it", options.host)
        log.info("serving on http://%s:%d (%d worker(s); POST /invocations, GET /ping)", options.host,
                 options.port, options.workers)
        uvicorn.run("radpriv.serve:create_app", factory=True, host=options.host, port=options.port,
                    workers=options.workers, log_level="info")
    return 0


def serve_command(args: Sequence[str]) -> int:
    return serve(parse_args(args))


# --------------------------------------------------------------------------- the app (one per worker)

def create_app():
    """MLflow's scoring app for the model in $RADPRIV_SERVE_MODEL, `/invocations` wrapped."""
    import torch
    from fastapi.responses import Response
    from mlflow.pyfunc import load_model, scoring_server

    from radpriv.tracking.pyfunc import check_texts

    radpriv_log = logging.getLogger("radpriv")
    if not radpriv_log.handlers:  # a worker process of its own: radpriv's lines as the CLI prints them
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("radpriv: %(message)s"))
        radpriv_log.addHandler(handler)
        radpriv_log.setLevel(logging.INFO)
        radpriv_log.propagate = False
    if os.environ.get(THREADS_ENV):
        torch.set_num_threads(int(os.environ[THREADS_ENV]))
    model = load_model(os.environ[MODEL_ENV])
    input_schema = model.metadata.get_input_schema()
    app = scoring_server.init(model)
    app.router.routes = [r for r in app.router.routes if getattr(r, "path", None) != "/invocations"]

    @app.post("/invocations")
    async def invocations(request: Request):
        content_type = request.headers.get("content-type") or ""
        media_type = content_type.split(";")[0].strip()
        if media_type.lower() not in ACCEPTED:
            return refusal(415, f"content type {media_type[:60] or '(none)'!r} is not "
                                f"accepted; {FORMATS} (Content-Type: application/json or text/csv)")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                return refusal(413, f"the request body is over {MAX_BODY_BYTES:,} bytes; send fewer reports "
                                    "per request")
        data = bytes(body)
        del body  # one copy of a body of up to 100 MB held while it is scored, not two

        def score():
            if media_type.lower() == "application/json":
                texts = json_texts(data)
                if texts is not None:
                    check_texts(texts)
            return scoring_server.invocations(data, content_type, model, input_schema)

        try:
            result = await asyncio.to_thread(score)
        except Exception as e:  # noqa: BLE001 - every failure is answered, none with the request's text
            return refusal(*explain(e))
        return Response(content=result.response, status_code=result.status, media_type=result.mimetype)

    return app


def json_texts(body: bytes) -> list | None:
    """The report column of a JSON request as sent, one value per row; None where the body is not
    JSON or names no `text` rows (MLflow's parser answers those).

    Read before MLflow parses the body: under the model's string signature MLflow turns a null or
    a number in `inputs`/`instances` into a string ("None", "1.5"), which the model's own check
    (pyfunc.check_texts) would then score as a report."""
    import json

    try:
        payload = json.loads(body)
    except ValueError:  # also invalid UTF-8 (UnicodeDecodeError): MLflow's parsing refuses it
        return None
    if not isinstance(payload, dict):
        return None
    for key in ("inputs", "instances"):
        rows = payload.get(key)
        if isinstance(rows, dict):  # columnar: {"text": [...]}
            return rows["text"] if isinstance(rows.get("text"), list) else None
        if isinstance(rows, list):
            return _record_texts(rows) if any(isinstance(r, dict) for r in rows) else \
                (None if any(isinstance(r, list) for r in rows) else rows)
    split = payload.get("dataframe_split")
    if isinstance(split, dict) and isinstance(split.get("columns"), list) and "text" in split["columns"] \
            and isinstance(split.get("data"), list):
        i = split["columns"].index("text")
        return [row[i] if isinstance(row, list) and len(row) > i else None for row in split["data"]]
    records = payload.get("dataframe_records")
    return _record_texts(records) if isinstance(records, list) else None


def _record_texts(records: list) -> list | None:
    """[{"text": ...}, ...] → the texts (None for a record without one); None if no record names
    `text` (a request without the column, refused as such)."""
    if not any(isinstance(r, dict) and "text" in r for r in records):
        return None
    return [r.get("text") if isinstance(r, dict) else None for r in records]


def refusal(status: int, message: str):
    """A JSON error answer in MLflow's shape ({"error_code", "message"}), also logged (no text)."""
    import json

    from fastapi.responses import Response

    code = {400: "BAD_REQUEST", 413: "REQUEST_LIMIT_EXCEEDED", 415: "BAD_REQUEST"}.get(status, "INTERNAL_ERROR")
    log.warning("refused a request (%d): %s", status, message)
    return Response(content=json.dumps({"error_code": code, "message": message}), status_code=status,
                    media_type="application/json")


def explain(error: BaseException) -> tuple[int, str]:
    """(status, message) for a failed invocation, from the exception types alone: MLflow's own
    messages can quote the request, so none is passed on."""
    from mlflow.exceptions import MlflowException

    chain = []
    e: BaseException | None = error
    while e is not None and len(chain) < 10:
        chain.append(e)
        e = e.__cause__ or e.__context__
    for e in chain:
        if isinstance(e, RequestError):
            return 400, str(e)
    if any(isinstance(e, UnicodeDecodeError) for e in chain):
        return 400, "the request body is not valid UTF-8"
    if any(type(e).__name__ == "JSONDecodeError" for e in chain):
        return 400, f"the request body is not valid JSON; {FORMATS}"
    if not isinstance(error, MlflowException):
        log.error("an invocation failed with %s", type(error).__name__)
        return 500, f"the model failed on this request ({type(error).__name__}); the server log has no more detail"
    if "missing inputs" in error.message:
        return 400, f"the request has no `text` column; {FORMATS}"
    status = error.get_http_status_code()
    return (status if 400 <= status < 500 else 400), f"the request is not in a form the model accepts; {FORMATS}"
