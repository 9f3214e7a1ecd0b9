"""Regenerate the README's pictures of `mlbox tui`: docs/img/pulse.{svg,png} and docs/img/deployments.{svg,png}.

Run from a checkout: `.venv/bin/python docs/tools/tui_screenshots.py`. It makes a throwaway box in a
temporary directory (the quickstart's `tabular-classification` project, two small xgboost versions of
`churn`, a deployment with a 10% canary, two queued jobs and a drift check), all done by an admin
`ada` so no OS user name is in the pictures. It drives the app with Pilot at 100×30, saves each screen
with the app's own `save_screenshot` (SVG), and turns each SVG into a PNG with headless chromium.
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
    finally:
        box.close()


async def shoot(home: Path) -> list[Path]:
    app = MlboxApp(LocalClient(load_settings(home, environ=ENVIRON), os_user=ADMIN), refresh_s=60)
    saved = []
    async with app.run_test(size=SIZE) as pilot:
        for key, name in ((None, "pulse"), ("4", "deployments")):
            if key:
                await pilot.press(key)
            for _ in range(3):  # the screen's load runs in a worker: wait for it and its paint
                await pilot.pause()
                await app.workers.wait_for_complete()
            await pilot.pause()
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
