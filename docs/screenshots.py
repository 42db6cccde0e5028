"""The MLflow UI pages of docs/mlflow_ui.md, taken again: starts ``mlflow ui`` on 127.0.0.1 over a
store that ``make demo`` and a ``moco tune`` wrote, and screenshots with headless Chromium (Debian's
``chromium`` package) the pretraining run, its registered model version and the sweep's parent run::

    python docs/screenshots.py --store sqlite:///mlflow.db --out docs/images
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from mlflow.tracking import MlflowClient

CHROMIUM = "chromium"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"mlflow ui did not answer at {url} within {timeout_s:.0f} s")


def pages(store: str) -> dict[str, str]:
    """Page name -> the UI route of the newest pretraining run, the newest version of its registered
    model and the newest sweep's parent run."""
    client = MlflowClient(store)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, order_by=["attributes.start_time DESC"])
    sweeps = [r for r in runs if "moco.sweep" in r.data.tags and "mlflow.parentRunId" not in r.data.tags]
    parent, run = sweeps[0], next(r for r in runs if "moco.sweep" not in r.data.tags)
    version = client.search_model_versions(f"run_id='{run.info.run_id}'")[0]
    return {
        "mlflow_run": f"#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}",
        "mlflow_run_metrics": f"#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}/model-metrics",
        "mlflow_model_version": f"#/models/{version.name}/versions/{version.version}",
        "mlflow_sweep": f"#/experiments/{parent.info.experiment_id}/runs/{parent.info.run_id}",
        "mlflow_sweep_plot": f"#/experiments/{parent.info.experiment_id}/runs/{parent.info.run_id}"
        "/artifacts/plots/metric_vs_temperature.png",
        "mlflow_runs": f"#/experiments/{parent.info.experiment_id}/runs",
    }


# The UI's own preferences, set in its localStorage before the pages load: the model-training view (not
# GenAI's) and its assistant panel closed (it opens by itself on a first visit from 127.0.0.1).
# (its settings hook stores each key with a version suffix, the value as JSON)
PREFERENCES = {
    "mlflow.workflowType_v1": "machine_learning",
    "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": True,
    "mlflow.assistant.panelOpen_v1": False,
    "mlflow.detectIssues.guidanceShown_v1": True,
    "mlflow.flagForReview.guidanceShown_v1": True,
}


async def screenshots(base: str, routes: dict[str, str], out: Path, profile: Path) -> None:
    """Each route of ``base`` as a PNG in ``out``, through the DevTools protocol of a headless Chromium
    (aiohttp's websocket client, which Ray already brings)."""
    import asyncio
    import base64
    import json

    import aiohttp

    port = free_port()
    browser = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
        + [f"--remote-debugging-port={port}", f"--user-data-dir={profile}", "--window-size=1440,1000"]
        + ["about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                try:
                    async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
                        (page,) = [t for t in await r.json() if t["type"] == "page"]
                    break
                except (aiohttp.ClientError, ValueError):
                    await asyncio.sleep(0.2)
            async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                calls = iter(range(1, 1_000_000))

                async def call(method: str, **params) -> dict:
                    n = next(calls)
                    await ws.send_str(json.dumps({"id": n, "method": method, "params": params}))
                    while True:
                        msg = json.loads((await ws.receive()).data)
                        if msg.get("id") == n:
                            return msg.get("result", {})

                async def open_page(url: str) -> None:
                    await call("Page.navigate", url=url)
                    await asyncio.sleep(8)  # the UI renders after its API calls

                await call("Page.enable")
                await open_page(base)
                script = ";".join(
                    f"localStorage.setItem({json.dumps(k)}, {json.dumps(json.dumps(v))})"
                    for k, v in PREFERENCES.items()
                )
                await call("Runtime.evaluate", expression=script)
                await call("Page.reload")  # the app reads them as it starts
                await asyncio.sleep(8)
                for name, route in routes.items():
                    await open_page(base + route)
                    shot = await call("Page.captureScreenshot", format="png")
                    (out / f"{name}.png").write_bytes(base64.b64decode(shot["data"]))
                    print(out / f"{name}.png")
    finally:
        browser.terminate()
        browser.wait(timeout=30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", default="sqlite:///mlflow.db", help="the MLflow store (default: the demo's)")
    p.add_argument("--out", default="docs/images", help="folder of the PNGs")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    ui = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", args.store, "--host", "127.0.0.1"]
        + ["--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}/"
        wait_for(base, 60)
        with tempfile.TemporaryDirectory() as profile:
            asyncio.run(screenshots(base, pages(args.store), out, Path(profile)))
    finally:
        ui.terminate()
        ui.wait(timeout=30)


if __name__ == "__main__":
    main()
