"""The monitoring report: a self-contained offline page with every plot, escaped data, and plots a real browser renders."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlbox.errors import ValidationError
from mlbox.monitor.report import render_report

# read at import, before conftest's clean_env narrows PATH to an empty folder for each test
SYSTEM_PATH = os.environ.get("PATH", os.defpath)
HOSTILE = "<script>alert(1)</script>"
LEVEL_HOSTILE = '"><img src=x onerror=alert(2)>'
START = datetime(2026, 11, 20, 6, 0, tzinfo=timezone.utc)
NUMERIC = [f"num_{i:02d}" for i in range(40)]
CATEGORICAL = [f"cat_{i:02d}" for i in range(9)] + [HOSTILE]
DRIFTED = {"num_03", "num_17", "num_29", "cat_02", HOSTILE}


# check results in the brief's format (CheckResult.as_dict()), built by hand ----------------------


def numeric_drift(name: str, shift: float, rng: np.random.Generator) -> dict[str, Any]:
    edges = [round(float(e), 3) for e in np.linspace(-1.28, 1.28, 9)]
    bins = [f"≤ {edges[0]}"] + [f"({a}, {b}]" for a, b in zip(edges, edges[1:], strict=False)] + [f"> {edges[-1]}"]
    ref = np.full(10, 0.1)
    cur = np.clip(ref + shift * np.linspace(-0.05, 0.05, 10) + rng.normal(0, 0.003, 10), 0, None)
    cur = cur / cur.sum()
    drifted = shift > 0
    w = 0.2 * shift + abs(rng.normal(0, 0.005))
    return {
        "name": name, "kind": "numeric", "status": "drift" if drifted else "ok", "drifted": drifted,
        "rows": 20000, "null_rate": 0.01, "out_of_range_rate": 0.002 * shift, "unseen_rate": None,
        "reason": f"Wasserstein/sd {w:.3f} {'≥' if drifted else '<'} 0.1 and KS p {'<' if drifted else '≥'} 0.01.",
        "tests": {
            "psi": {"value": 0.04 * shift + 0.001},
            "ks": {"statistic": 0.08 * shift + 0.004, "p_value": 1e-9 if drifted else 0.41},
            "chi2": {"statistic": 300.0 * shift + 9.1, "p_value": 1e-12 if drifted else 0.43, "dof": 9},
            "js": {"value": 0.1 * shift + 0.01},
            "wasserstein": {"value": w},
        },
        "histogram": {"bins": bins, "reference": ref.tolist(), "current": cur.tolist()},
    }  # fmt: skip


def categorical_drift(name: str, shift: float) -> dict[str, Any]:
    levels = ["red", "green", "blue", LEVEL_HOSTILE, "(unseen)"]
    ref = [0.4, 0.3, 0.2, 0.1, 0.0]
    cur = [0.4 - 0.1 * shift, 0.3, 0.2 + 0.05 * shift, 0.1, 0.05 * shift]
    drifted = shift > 0
    return {
        "name": name, "kind": "categorical", "status": "drift" if drifted else "ok", "drifted": drifted,
        "rows": 20000, "null_rate": 0.0, "out_of_range_rate": None, "unseen_rate": 0.05 * shift,
        "reason": "JS distance 0.12 ≥ 0.05 and chi² p < 0.01." if drifted else "No significant change.",
        "tests": {
            "psi": {"value": 0.3 * shift}, "chi2": {"statistic": 800.0 * shift + 3.0, "p_value": 0.0 if drifted else 0.6, "dof": 4},
            "js": {"value": 0.12 * shift + 0.004},
        },
        "histogram": {"bins": levels, "reference": ref, "current": cur},
    }  # fmt: skip


def check(when: datetime, progress: float, *, canary: bool = True, seed: int = 0) -> dict[str, Any]:
    """A check where the DRIFTED columns have shifted by `progress` (0: not yet, 1: fully)."""
    rng = np.random.default_rng(seed)
    variants = {}
    for variant, model in (("primary", "churn:3"), ("canary", "churn:4"))[: 2 if canary else 1]:
        features = {n: numeric_drift(n, progress if n in DRIFTED else 0.0, rng) for n in NUMERIC}
        features |= {n: categorical_drift(n, progress if n in DRIFTED else 0.0) for n in CATEGORICAL}
        outputs = {"class": categorical_drift("class", 0.0), "p_yes": numeric_drift("p_yes", progress, rng)}
        drifted = sum(f["drifted"] for f in features.values())
        variants[variant] = {
            "model": model, "rows": 20000, "drifted": drifted > 0, "share": drifted / len(features),
            "weighted_share": min(1.0, 2 * drifted / len(features)), "features": features, "outputs": outputs,
        }  # fmt: skip
    return {
        "deployment": "churn", "checked_at": when.isoformat(),
        "window": {"last_s": 86400, "since": None, "until": None, "last_rows": None},
        "drifted": any(v["drifted"] for v in variants.values()),
        "thresholds": {"numeric": {"wasserstein": 0.1, "alpha": 0.01}, "categorical": {"js": 0.05}, "share": 0.3},
        "variants": variants,
    }  # fmt: skip


def quality_block(points: int = 5) -> dict[str, Any]:
    """Quality of both variants over `points` checks (Quality.as_dict() per variant), the last one current."""

    def one(model: str, acc: float, coverage: float) -> dict[str, Any]:
        return {"variant": "", "task": "classification", "model": model, "rows": 20000, "labelled": int(20000 * coverage),
                "coverage": coverage, "status": "ok", "reason": "",
                "metrics": {"accuracy": acc, "f1": acc - 0.05, "roc_auc": acc + 0.05, "log_loss": 1.2 - acc,
                            "calibration_error": 0.04}}  # fmt: skip

    history = [
        {"checked_at": (START + timedelta(hours=6 * i)).isoformat(),
         "variants": {"primary": one("churn:3", 0.86 - 0.01 * i, 0.2 + 0.1 * i),
                      "canary": one("churn:4", 0.84 - 0.02 * i, 0.1 + 0.1 * i)}}
        for i in range(points)
    ]  # fmt: skip
    return {"variants": history[-1]["variants"], "history": history}


AB = {
    "metric": "accuracy", "direction": "higher",
    "primary": {"model": "churn:3", "n": 4100, "value": 0.82}, "canary": {"model": "churn:4", "n": 3900, "value": 0.76},
    "difference": -0.06, "ci_low": -0.078, "ci_high": -0.041, "confidence": 0.95,
    "method": "bootstrap, 2,000 resamples", "verdict": "canary worse", "more_labels_needed": None, "min_effect": 0.01,
    "reason": "difference -0.06, the interval [-0.078, -0.041] excludes 0",
}  # fmt: skip


def full_report(deployment: str = "churn") -> tuple[str, dict[str, Any], float]:
    checks = [check(START + timedelta(hours=6 * i), i / 4, seed=i) for i in range(5)]
    latest = checks[-1]
    started = time.perf_counter()
    page = render_report(deployment=deployment, latest=latest, history=checks[:-1], quality=quality_block(),
                         ab=AB, generated_at="2026-11-21T07:00:00+00:00")  # fmt: skip
    return page, latest, time.perf_counter() - started


@pytest.fixture(scope="module")
def rendered() -> tuple[str, dict[str, Any], float]:
    return full_report(HOSTILE)


def figures(page: str, kind: str) -> list[str]:
    return re.findall(rf'<figure class="plot[^"]*" data-plot="{kind}"[^>]*>(.*?)</figure>', page, re.S)


# the page --------------------------------------------------------------------------------------


def test_every_plot_is_an_inline_svg(rendered: tuple[str, dict[str, Any], float]) -> None:
    page, latest, _ = rendered
    per_variant = len(NUMERIC) + len(CATEGORICAL) + 2  # every feature and both outputs
    dists = figures(page, "distribution")
    assert len(dists) == 2 * per_variant
    # drift share over time, then per variant one Wasserstein plot (numeric) and one JS plot (categorical)
    assert len(figures(page, "drift-share")) == 1
    assert len(figures(page, "drift-scores")) == 4
    assert len(figures(page, "quality")) == 1
    assert len(figures(page, "ab")) == 1
    every = dists + figures(page, "drift-share") + figures(page, "drift-scores") + figures(page, "quality") + figures(page, "ab")
    assert all(f.count("<svg") == 1 and f.rstrip().endswith("</svg>") for f in every)
    assert page.count("<svg") == len(every)
    # drifted features come first in each variant's distributions
    primary = re.findall(r'data-plot="distribution" data-variant="primary" data-feature="([^"]*)"', page)
    assert {p.replace("&lt;", "<").replace("&gt;", ">").replace("&#x27;", "'") for p in primary[:5]} == DRIFTED
    # a plot's bars carry the histogram: 10 bins x (reference, current) for a numeric feature
    one = re.search(r'data-feature="num_03">(.*?)</figure>', page, re.S)
    assert one is not None and one.group(1).count("<path") >= 20


def test_the_page_is_self_contained(rendered: tuple[str, dict[str, Any], float]) -> None:
    page, _, _ = rendered
    for pattern in (r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", r"@import", r"url\(\s*['\"]?(?:https?:)?//",
                    r"<link\b", r"<script\b", r"<img\b", r"<iframe\b"):  # fmt: skip
        assert not re.search(pattern, page, re.I), pattern
    # the only references are in-page anchors (#...) from the verdict tables and the SVGs' own clip paths
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", page)
    assert refs and all(r.startswith("#") for r in refs)


def test_every_name_is_present_and_escaped(rendered: tuple[str, dict[str, Any], float]) -> None:
    page, _, _ = rendered
    for name in NUMERIC + CATEGORICAL[:-1]:
        assert f">{name}</a>" in page and f'data-feature="{name}"' in page
    assert HOSTILE not in page and "<img" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # the deployment and feature name, as text
    # a hostile level inside a plot's tick labels: XML-escaped by matplotlib (and cut to the label length)
    assert '"&gt;&lt;img src=x' in page
    assert "<title>mlbox monitoring report: &lt;script&gt;" in page


def test_verdicts_ab_and_quality_in_words(rendered: tuple[str, dict[str, Any], float]) -> None:
    page, _, _ = rendered
    assert "drift detected" in page
    assert 'badge bad">canary worse</span>' in page
    assert "95% interval -0.078 to -0.041" in page and "bootstrap, 2,000 resamples" in page
    assert "last 24h" in page and "churn:3" in page and "churn:4" in page
    assert re.search(r"<td>primary</td><td>churn:3</td><td>20,000</td><td>12,000</td><td>60.0%</td><td>0.82</td>", page)
    assert "Why: difference -0.06, the interval [-0.078, -0.041] excludes 0." in page


def test_fast_and_deterministic(rendered: tuple[str, dict[str, Any], float]) -> None:
    page, _, seconds = rendered
    # 2 variants x 52 distributions + 7 other plots; about 3 s on a 2-core box, alone
    assert seconds < 20, f"the report took {seconds:.1f} s"
    again, _, _ = full_report(HOSTILE)
    assert again == page
    # a history that already ends with the latest check draws it once
    checks = [check(START + timedelta(hours=6 * i), i / 4, seed=i, canary=False) for i in range(2)]
    for c in checks:
        c["variants"]["primary"]["features"] = {"num_03": c["variants"]["primary"]["features"]["num_03"]}
    pages = [render_report(deployment="d", latest=checks[-1], history=h, quality=None, ab=None, generated_at="t")
             for h in (checks, checks[:-1])]  # fmt: skip
    assert pages[0] == pages[1] and figures(pages[0], "drift-share")
    assert len(page) < 4_000_000


def test_matplotlib_loads_only_when_a_report_is_drawn() -> None:
    code = (
        "import sys, mlbox.monitor.report as r; assert 'matplotlib' not in sys.modules, 'imported at import time'; "
        # (reading rcParams["backend"] would resolve the backend through pyplot: it is left out)
        "import matplotlib; keys = [k for k in matplotlib.rcParams if k != 'backend']; "
        "before = {k: matplotlib.rcParams[k] for k in keys}; "
        "r.render_report(deployment='d', latest={'variants': {}}, history=[], quality=None, ab=None, generated_at='t'); "
        "page = r.render_report(deployment='d', latest={'variants': {'primary': {'features': {'x': {'histogram': "
        "{'bins': ['a'], 'reference': [1.0], 'current': [1.0]}}}}}}, history=[], quality=None, ab=None, generated_at='t'); "
        "assert page.count('<svg') == 1; "
        "changed = [k for k in keys if before[k] != matplotlib.rcParams[k]]; assert not changed, changed; "
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]


def small_check(keep: int = 4) -> dict[str, Any]:
    """One primary-only check with its first `keep` features (fewer plots: a faster test)."""
    latest = check(START, 0.0, canary=False)
    features = latest["variants"]["primary"]["features"]
    latest["variants"]["primary"]["features"] = dict(list(features.items())[:keep])
    return latest


def test_missing_parts_are_sentences_not_empty_plots() -> None:
    latest = small_check()
    latest["variants"]["primary"]["features"]["num_00"] |= {"status": "empty", "histogram": None,
                                                              "reason": "No values in the window."}  # fmt: skip
    page = render_report(deployment="churn", latest=latest, history=[], quality=None, ab=None, generated_at="now")
    assert "no drift detected" in page
    assert "Only one check so far" in page
    assert "No labels attached yet" in page and "<code>mlbox labels ingest</code>" in page
    assert "No canary" in page
    assert "No distribution to draw. No values in the window." in page
    assert not figures(page, "drift-share") and not figures(page, "quality") and not figures(page, "ab")
    assert page.count("<svg") == 4 + 2 - 1  # four features and two outputs, less the empty one


def test_odd_inputs_give_clear_results() -> None:
    with pytest.raises(ValidationError, match="check result"):
        render_report(deployment="d", latest={"variants": None}, history=[], quality=None, ab=None, generated_at="now")
    # no traffic: no variants with rows; broken history entries and NaN values are skipped, not fatal
    latest = small_check()
    latest["variants"]["primary"]["rows"] = 0
    latest["variants"]["primary"]["features"]["num_01"]["tests"]["psi"]["value"] = float("nan")
    broken: list[Any] = [{"checked_at": "yesterday", "variants": {}}, "junk", {"variants": None}]
    quality = {"variants": {"primary": {"rows": 10, "labelled": 0, "coverage": 0.0, "metrics": {"accuracy": None}}},
               "history": []}  # fmt: skip
    ab = {**AB, "verdict": "not enough labels (about 900 more needed)", "more_labels_needed": 900,
          "primary": {"model": "m:1", "n": 12, "value": None}, "ci_low": None, "ci_high": None, "difference": None}  # fmt: skip
    page = render_report(deployment="d", latest=latest, history=broken, quality=quality, ab=ab, generated_at="now")
    assert "no traffic in the window" in page and 'badge muted">no traffic</span>' in page
    assert "Labels cover none of the predictions" in page
    assert "About 900 more labels are needed" in page and "No plot yet" in page


# a real browser --------------------------------------------------------------------------------


def browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name, path=SYSTEM_PATH)
        if found:
            return found
    pytest.skip("no chromium, chromium-browser or google-chrome on PATH (./install.sh --dev installs it as root)")


def chromium(path: Path, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        browser(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
        # any fetch would fail: what renders comes from the file alone
        "--host-resolver-rules=MAP * ~NOTFOUND", *args, path.as_uri(),
    ]  # fmt: skip
    env = {**os.environ, "PATH": SYSTEM_PATH}  # the launcher is a shell script that needs the system's tools
    return subprocess.run(command, capture_output=True, text=True, timeout=180, check=False, env=env)


@pytest.mark.slow
def test_headless_chromium_renders_the_plots(tmp_path: Path, rendered: tuple[str, dict[str, Any], float]) -> None:
    page, _, _ = rendered
    path = tmp_path / "report.html"
    path.write_text(page, encoding="utf-8")
    done = chromium(path, tmp_path / "profile-dom", "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    # the browser parsed every inline SVG as an element (a broken page would lose or nest them)
    assert dom.count("<svg") == page.count("<svg") == 2 * 52 + 7  # distributions, then drift share, 4 drift scores, quality, A/B
    assert "drift detected" in dom and "canary worse" in dom
    assert HOSTILE not in dom and "<script" not in dom.lower()

    shot = tmp_path / "report.png"
    done = chromium(path, tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1280,4000", "--hide-scrollbars")
    assert shot.is_file(), done.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image  # Pillow comes with matplotlib

    with Image.open(shot) as image:
        assert image.size == (1280, 4000)
        rgb = image.convert("RGB")
        colours = rgb.getcolors(maxcolors=1 << 20) or []
        # the grey reference bars and the red (drifted) current bars of the first distributions are drawn
        reference = sum(n for n, c in colours if c == (0x9A, 0xA5, 0xB1))
        drifted = sum(n for n, c in colours if c == (0xC8, 0x37, 0x2D))
    # text, badges, bars: a blank page has one colour
    assert len(colours) > 50, f"the screenshot looks blank ({len(colours)} colours)"
    assert reference > 1000 and drifted > 1000, (reference, drifted)
