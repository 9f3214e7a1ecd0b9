"""Regenerate the pictures of `mlbox tui`: docs/img/pulse, deployments (the README's) and predictions (docs/tui.md).

Run from a checkout: `.venv/bin/python docs/tools/tui_screenshots.py`. It makes a throwaway box in a
temporary directory (the quickstart's `tabular-classification` project, two small xgboost versions of
`churn`, a deployment with a 10% canary and churn:2 as its shadow, two queued jobs and a drift check),
all done by an admin `ada` so no OS user name is in the pictures. 600 requests are answered by the
real models and logged through the real prediction-log sidecar (which runs the shadow), labelled, and
checked by `mlbox monitor ab` and `quality`'s own code, so the Deployments panel has something to say.
It drives the app with Pilot at 100×30, saves each screen with the app's own `save_screenshot` (SVG),
and turns each SVG into a PNG with headless chromium.
"""

import asyncio
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from mlbox.box import Box
from mlbox.config import load_settings
from mlbox.monitor.records import Records
from mlbox.project import init_project
from mlbox.security.osuser import effective_os_user
from mlbox.train.runner import train
from mlbox.train.spec import parse_spec
from mlbox.tui.app import MlboxApp
from mlbox.tui.local import LocalClient

OUT = Path(__file__).resolve().parents[1] / "img"
SIZE = (100, 30)
ENVIRON = {"MLBOX_SERVE_PORT": "9"}  # the discard port: the picture shows the server down, not someone's server
ADMIN = "ada"


def make_box(home: Path) -> None:
    init_project(home, "tabular-classification")
    box = Box.create(load_settings(home, environ=ENVIRON), effective_os_user())
    try:
        box.identity.add_user(effective_os_user(), ADMIN, "admin", os_user=ADMIN)
        fs = box.features
        fs.apply(fs.load(), ADMIN)
        for view in fs.catalog.latest_views():
            fs.ingest(view.name, actor=ADMIN)
        rng = np.random.default_rng(0)
        frame = pd.DataFrame({f"x{i}": rng.normal(size=600) for i in range(3)})
        frame["y"] = (frame.x0 + 0.5 * frame.x1 + 0.3 * rng.logistic(size=600) > 0).astype(int)
        frame.to_parquet(home / "plain.parquet")
        for depth in (3, 2):
            raw = {"experiment": "churn", "model": "churn", "task": "classification", "target": "y", "flavor": "xgboost",
                   "data": {"path": "plain.parquet"}, "device": "cpu",
                   "params": {"n_estimators": 5, "max_depth": depth, "learning_rate": 0.3}}  # fmt: skip
            train(parse_spec(raw, "screenshot spec", home), store=None, tracking=box.tracking, registry=box.registry,
                  actor=ADMIN, register=True)  # fmt: skip
        box.registry.set_alias("churn:1", "production", ADMIN)
        box.deployments.create("churn_api", "churn:1", ADMIN)
        box.deployments.canary("churn_api", "churn:2", 10.0, ADMIN, sticky_key="customer_id")
        box.jobs.submit("command", {"argv": ["true"]}, ADMIN)
        box.jobs.submit("command", {"argv": ["sleep", "1"]}, ADMIN)
        drift = {"deployment": "churn_api", "drifted": True, "variants": {
            "primary": {"model": "churn:1", "rows": 500, "drifted": True, "share": 0.67, "features": {"x0": {"drifted": True}}},
            "canary": {"model": "churn:2", "rows": 60, "drifted": False, "share": 0.0, "features": {"x0": {"drifted": False}}},
        }}  # fmt: skip
        Records(box.db).add_check("churn_api", "drift", drift, "drift", ADMIN)
        box.deployments.shadow("churn_api", "churn:2", ADMIN)
        traffic(box, home)
    finally:
        box.close()


def traffic(box: Box, home: Path, n: int = 600) -> None:
    """`n` requests answered by the real models, logged through the real sidecar (shadow included), labelled, checked."""
    import io
    import time

    import orjson

    from mlbox.monitor.window import Window
    from mlbox.serve.labels import ingest_labels
    from mlbox.serve.predlog.sidecar import Sidecar, Signatures
    from mlbox.serve.predlog.wire import Record, encode_frame
    from mlbox.serve.predlog.writer import PredictionLog
    from mlbox.serve.runtime import ModelCache
    from mlbox.serve.validation import encode_rows

    rng, now = np.random.default_rng(1), time.time()
    models = ModelCache(box.registry, 1)
    records, shadows, labels = [], [], []
    for i in range(n):
        variant = "canary" if i % 10 == 0 else "primary"
        row = {f"x{k}": round(float(rng.normal(scale=0.8)), 3) for k in range(3)}
        model = models.get("churn:2" if variant == "canary" else "churn:1")
        outputs = model.outputs(model.predict(encode_rows(model.signature, [row], "rows", levels=True)))
        request = f"{i:08x}{int(rng.integers(1 << 48)):012x}"
        records.append(Record(now - (n - i) * 30.0, request, "churn_api", model.ref, variant, False,
                              float(rng.gamma(4, 0.4)), orjson.dumps([{"customer_id": 1000 + i % 200}]).decode(),
                              orjson.dumps([row]).decode(), orjson.dumps(outputs).decode(), None))  # fmt: skip
        if variant == "primary":
            shadows.append((len(records) - 1, "churn:2"))
        labels.append(f"{request},{int(row['x0'] + 0.5 * row['x1'] + 0.3 * rng.logistic() > 0)}\n")
    log = PredictionLog(box.paths.predictions, box.db, flush_seconds=3600, signature_of=Signatures(box.registry).get)
    Sidecar(log, ModelCache(box.registry, 1), lambda line: None).run(io.BytesIO(encode_frame(records, shadows)))
    path = home / "labels.csv"
    path.write_text("request_id,label\n" + "".join(labels))
    ingest_labels(box.db, box.audit, box.paths.predictions, "churn_api", path, ADMIN)
    box.monitor.ab("churn_api", Window.parse(), actor=ADMIN, rounds=2000)
    box.monitor.quality("churn_api", Window.parse(), actor=ADMIN)


async def shoot(home: Path) -> list[Path]:
    app = MlboxApp(LocalClient(load_settings(home, environ=ENVIRON), os_user=ADMIN), refresh_s=60)
    saved = []
    async with app.run_test(size=SIZE) as pilot:
        # predictions: `v` once shows the primary's records (the sidecar logs every shadow answer at its own time,
        # after the requests it mirrors, so the newest page of this log is shadows only)
        for keys, name in (((), "pulse"), (("4",), "deployments"), (("p", "v", "down"), "predictions")):
            for key in keys:
                await pilot.press(key)
                for _ in range(3):  # the screen's load runs in a worker: wait for it and its paint
                    await pilot.pause()
                    await app.workers.wait_for_complete()
            await pilot.pause(0.2)
            saved.append(Path(app.save_screenshot(f"{name}.svg", path=str(OUT))))
    return saved


def to_png(svg: Path) -> Path | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        return None
    box = re.search(r'viewBox="0 0 ([\d.]+) ([\d.]+)"', svg.read_text())
    width, height = (round(float(box[1])), round(float(box[2]))) if box else (1200, 800)
    png = svg.with_suffix(".png")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={profile}", f"--window-size={width},{height}", f"--screenshot={png}",
                        svg.as_uri()], check=True, capture_output=True, timeout=120)  # fmt: skip
    return png


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "box"
        make_box(home)
        for svg in asyncio.run(shoot(home)):
            png = to_png(svg)
            print(svg, "→", png or "no chromium: SVG only")


if __name__ == "__main__":
    main()
