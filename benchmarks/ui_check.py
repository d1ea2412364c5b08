"""What a person sees in the MLflow UI, checked in a real browser (headless Chromium).

    python benchmarks/ui_check.py [--tracking-uri URI --run-id ID [--model NAME]] [--out DIR]

Without a run: trains a tiny private model on the CT report data (RADPRIV_DATA_DIR) into a
fresh sqlite store and registers it. Then starts `mlflow ui` on loopback, opens the run's page
and, when a model is registered, its version's page in headless Chromium (Debian's `chromium`
package: `apt-get install chromium`), and checks that the run's name, its privacy statement,
its dataset inputs and the model card are on the pages. Writes a PNG screenshot of each page
under --out. Exit status 0 when every check passes, 1 when one fails, 2 when Chromium is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model=tiny_bert", "data=ct_rate_text", "data.train_shard=0/4", "data.max_length=48",
        "trainer.max_epochs=1", "trainer.progress_bar=false", "privacy.expected_batch_size=16",
        "privacy.epsilon=1", "trainer.eval_batch_size=32"]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_tiny(uri: str, model: str, workdir: Path) -> str:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "radpriv.cli", "train", *TINY, f"tracking.register={model}"],
                          capture_output=True, text=True, env=env, cwd=workdir)
    if proc.returncode:
        raise SystemExit(f"ui_check: training the tiny model failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["run_id"]


def start_ui(uri: str, port: int, workdir: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
                             "--host", "127.0.0.1", "--port", str(port)], cwd=workdir,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    for _ in range(120):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(1)
    proc.kill()
    raise SystemExit("ui_check: mlflow ui did not answer within 120 s")


def page(browser: str, url: str, screenshot: Path) -> str:
    """The rendered DOM's text of `url`, after the app's scripts ran; and a screenshot."""
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--virtual-time-budget=20000", "--window-size=1400,1600"]
    subprocess.run([*flags, f"--screenshot={screenshot}", url], capture_output=True, timeout=180)
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=180).stdout
    return dom


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tracking-uri")
    ap.add_argument("--run-id")
    ap.add_argument("--model", default="ui-check", help="the registered model whose card is checked")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "ui"))
    args = ap.parse_args()
    browser = chromium()
    if browser is None:
        print("ui_check: no Chromium here: install it (apt-get install chromium) and run again", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        uri = args.tracking_uri or f"sqlite:///{workdir / 'mlflow.db'}"
        run_id = args.run_id or train_tiny(uri, args.model, workdir)
        client = mlflow.MlflowClient(uri, registry_uri=uri)
        run = client.get_run(run_id)
        versions = client.search_model_versions(f"name = '{args.model}'")
        versions = [v for v in versions if v.run_id == run_id]
        ui = start_ui(uri, free_port(), workdir)
        port = ui.args[ui.args.index("--port") + 1]
        base = f"http://127.0.0.1:{port}/#"
        try:
            run_dom = page(browser, f"{base}/experiments/{run.info.experiment_id}/runs/{run_id}", out / "run.png")
            checks = {"run name": run.info.run_name in run_dom,
                      "privacy statement": "DP for each" in run_dom or "No differential-privacy" in run_dom,
                      "dataset inputs": "/train" in run_dom}
            if versions:
                v = versions[-1]
                model_dom = page(browser, f"{base}/models/{args.model}/versions/{v.version}",
                                 out / f"model-{args.model}-v{v.version}.png")
                checks["model card"] = "Intended use" in model_dom and "Limitations" in model_dom
        finally:
            os.killpg(ui.pid, 15)
    for what, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {what}")
    print(f"screenshots: {out}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
