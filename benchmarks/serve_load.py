"""`radpriv serve` under concurrent load and hostile input.

    python benchmarks/serve_load.py [--model REF] [--requests 2000] [--concurrency 16]
        [--workers 1,2] [--precisions 32-true,bf16-mixed] [--set model=tiny_bert ...] [--out benchmarks/out]

Without --model it trains a 1-step model first (default MiniLM on Open-i, non-private: serving
cost does not depend on how well the model was trained) in a temporary store. For each
precision × worker count it starts `radpriv serve` on 127.0.0.1 at a free port, sends a few
warm-up requests, then --requests requests of one short report each from --concurrency client
threads (each with its own keep-alive connection), and reports throughput (req/s), p50 and p99
latency (ms), errors (anything but 200; must be 0), the seconds until every worker had loaded
the model, and the machine's 1-minute load average at the end (what else was running). Then,
on the last server, each hostile request of HOSTILE and its status, and whether the valid
request after it got 200.

Reports are Open-i's test split when the Open-i data is there, else a small built-in synthetic
list. The client runs on the same machine as the server and takes CPU from it: numbers compare
configurations on one machine, they are not a capacity figure. Writes serve_load.json and
serve_load.md under --out (benchmarks/_harness.py `write_result`).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import ROOT, header, write_result  # noqa: E402

sys.path.insert(0, str(ROOT))  # tests.helpers.serve: how the tests start and stop a server

SYNTHETIC = [
    "Heart size is normal. Lungs are clear. No pleural effusion or pneumothorax.",
    "Mild cardiomegaly. Small left pleural effusion with adjacent atelectasis.",
    "No acute cardiopulmonary abnormality. Degenerative changes of the thoracic spine.",
    "Right lower lobe opacity concerning for pneumonia. No pneumothorax.",
    "Stable calcified granuloma in the left upper lobe. Otherwise clear lungs.",
    "Hyperinflated lungs consistent with emphysema. No focal consolidation.",
    "Interval placement of a right internal jugular catheter, tip in the SVC.",
    "Bibasilar interstitial opacities, likely fibrosis. No effusion.",
]
MARKER = "BENCHMARK-MARKER"


def hostile_requests() -> dict[str, tuple[bytes, str]]:
    """name -> (body, content type) of each hostile request; every one carries MARKER."""
    report = f"{MARKER} small left pleural effusion."

    def split(texts):
        return json.dumps({"dataframe_split": {"columns": ["text"], "data": [[t] for t in texts]}}).encode()

    return {
        "empty text": (split([report, ""]), "application/json"),
        "missing text column": (json.dumps({"dataframe_split": {"columns": ["report"], "data": [[report]]}})
                                .encode(), "application/json"),
        "1 MB report": (split([report * (1_000_000 // len(report))]), "application/json"),
        "invalid UTF-8": (b'{"inputs": ["' + report.encode() + b'\xff\xfe"]}', "application/json"),
        "invalid JSON": (b'{"inputs": ["' + report.encode() + b'"', "application/json"),
        "10,000 rows": (split([report] * 10_000), "application/json"),
        "text/plain": (report.encode(), "text/plain"),
    }


def report_texts(cfg) -> tuple[list[str], str]:
    """Open-i's test-split reports when the data can be read without a download, else SYNTHETIC."""
    from radpriv.data.sources import load_table

    if cfg.data.name == "openi" and os.environ.get("RADPRIV_DATA_DIR"):
        table = load_table(cfg.data, 42)
        texts = [t for t, s in zip(table.texts, table.split, strict=True) if s == "test" and t.strip()]
        if texts:
            return texts, f"Open-i test split ({len(texts)} reports)"
    return SYNTHETIC, f"built-in synthetic list ({len(SYNTHETIC)} reports)"


def train_model(extra: list[str], root: Path) -> tuple[str, str, object]:
    """(run id, tracking uri, config) of a 1-step non-private model in a store under `root`."""
    from radpriv.config import compose
    from radpriv.train import train

    uri = f"sqlite:///{root / 'mlflow.db'}"
    cwd = os.getcwd()
    os.chdir(root)
    try:
        cfg = compose(["model=minilm", "data=openi", *extra, "privacy.epsilon=null", "trainer.max_epochs=1",
                       "trainer.limit_train_batches=1", "trainer.progress_bar=false",
                       "tracking.checkpoint_dir=null", f"tracking.uri={uri}"])
        return train(cfg)["run_id"], uri, cfg
    finally:
        os.chdir(cwd)


class Server:
    """`radpriv serve` in its own process group on a free loopback port."""

    def __init__(self, ref: str, uri: str, workers: int, precision: str, log: Path):
        from tests.helpers.serve import free_port, server_env, start_radpriv_serve

        self.port, self.log, self.workers = free_port(), log, workers
        t0 = time.perf_counter()
        self.proc = start_radpriv_serve(ref, self.port, log, server_env(uri), f"workers={workers}",
                                        f"precision={precision}", "timeout=120")
        self.wait()
        self.ready_s = time.perf_counter() - t0

    def wait(self, timeout_s: float = 300) -> None:
        """Until /ping answers and every worker has loaded the model (one log line each): /ping
        answers as soon as the first worker is up."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"radpriv serve exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if (request(self.port, "GET", "/ping", None, None)[0] == 200
                        and self.log.read_text().count("Application startup complete") >= self.workers):
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise SystemExit(f"radpriv serve not ready after {timeout_s} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        from tests.helpers.serve import stop

        stop(self.proc)


def request(port: int, method: str, path: str, body: bytes | None, content_type: str | None,
            conn: http.client.HTTPConnection | None = None, timeout: float = 120) -> tuple[int, bytes]:
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": content_type} if content_type else {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        if own:
            conn.close()


def load(port: int, texts: list[str], n: int, concurrency: int) -> dict:
    """n one-report requests from `concurrency` threads; throughput, latency percentiles, errors."""
    local = threading.local()
    bodies = [json.dumps({"inputs": [texts[i % len(texts)]]}).encode() for i in range(n)]

    def one(body: bytes) -> tuple[float, bool]:
        if getattr(local, "conn", None) is None:
            local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        t0 = time.perf_counter()
        try:
            status, _ = request(port, "POST", "/invocations", body, "application/json", local.conn)
            ok = status == 200
        except (OSError, http.client.HTTPException):
            local.conn.close()
            local.conn, ok = None, False
        return time.perf_counter() - t0, ok

    with ThreadPoolExecutor(concurrency) as pool:  # warm-up, untimed: every worker's first forward passes
        list(pool.map(one, bodies[:4 * concurrency]))
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, bodies))
    wall = time.perf_counter() - t0
    ms = sorted(1000 * s for s, _ in results)
    return {"requests": n, "concurrency": concurrency, "wall_s": round(wall, 2),
            "req_per_s": round(n / wall, 1), "p50_ms": round(statistics.median(ms), 1),
            "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 1),
            "errors": sum(not ok for _, ok in results)}


def hostile(port: int, valid: bytes) -> dict:
    """Each hostile request's status, whether its answer quoted the request, and the next valid one's status."""
    out = {}
    for name, (body, content_type) in hostile_requests().items():
        status, answer = request(port, "POST", "/invocations", body, content_type)
        after, _ = request(port, "POST", "/invocations", valid, "application/json")
        out[name] = {"status": status, "quotes_request": MARKER.encode() in answer,
                     "message": json.loads(answer).get("message", "")[:120] if answer.startswith(b"{") else
                     answer.decode("utf-8", "replace")[:120], "next_valid_status": after}
    return out


def markdown(r: dict) -> str:
    lines = [f"Model: {r['model']}; reports: {r['reports']}; {r['requests']} requests of one report each at "
             f"concurrency {r['concurrency']}; {r['machine']}, client on the same machine.", "",
             "| precision | workers | req/s | p50 ms | p99 ms | errors | ready s | load average |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for p in r["points"]:
        lines.append(f"| {p['precision']} | {p['workers']} | {p['req_per_s']} | {p['p50_ms']} | {p['p99_ms']} | "
                     f"{p['errors']} | {p['ready_s']} | {p['load_avg_1min']} |")
    lines += ["", "| hostile request | status | quotes the request | next valid request |", "|---|---:|---|---:|"]
    for name, h in r["hostile"].items():
        lines.append(f"| {name} | {h['status']} | {'yes' if h['quotes_request'] else 'no'} | "
                     f"{h['next_valid_status']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="a model reference; default: train a 1-step model (see --set)")
    ap.add_argument("--tracking-uri", help="the store --model is looked up in")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--workers", default="1,2", help="comma list of worker counts")
    ap.add_argument("--precisions", default="32-true,bf16-mixed")
    ap.add_argument("--set", action="append", default=[], help="a training override, e.g. --set model=tiny_bert")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out"))
    args = ap.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from radpriv.config import compose

    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        root = Path(tmp)
        if args.model:
            ref, uri, what = args.model, args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"), args.model
            cfg = compose(["data=openi", *args.set])
        else:
            ref, uri, cfg = train_model(args.set, root)
            what = f"{cfg.model.name}, 1 training step, non-private"
        texts, source = report_texts(cfg)
        points, hostile_result = [], {}
        for precision in args.precisions.split(","):
            for workers in (int(w) for w in args.workers.split(",")):
                server = Server(ref, uri, workers, precision, root / f"serve-{precision}-{workers}.log")
                try:
                    point = load(server.port, texts, args.requests, args.concurrency)
                    point.update(precision=precision, workers=workers, ready_s=round(server.ready_s, 1),
                                 load_avg_1min=round(os.getloadavg()[0], 1))  # what else ran meanwhile
                    points.append(point)
                    print(json.dumps(point), file=sys.stderr, flush=True)
                    if not hostile_result:
                        hostile_result = hostile(server.port, json.dumps({"inputs": texts[:2]}).encode())
                finally:
                    server.stop()
                log_text = server.log.read_text()
                if MARKER in log_text:
                    raise SystemExit(f"the server log quoted a request: {server.log}")
    result = {**header(), "model": what, "reports": source, "requests": args.requests,
              "concurrency": args.concurrency, "points": points, "hostile": hostile_result}
    write_result(args.out, "serve_load", result, markdown)
    if any(p["errors"] for p in points) or any(h["quotes_request"] or h["next_valid_status"] != 200
                                               or not 400 <= h["status"] < 500 for h in hostile_result.values()):
        raise SystemExit("serve_load: errors under load, or a hostile request answered badly (see above)")


if __name__ == "__main__":
    main()
