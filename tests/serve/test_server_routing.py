"""Traffic routing on a real `mlbox serve`: canary share, sticky entities, rollback and promotion without a restart.

Deployment changes go through the real `mlbox deploy` CLI while the server runs; it must pick
them up from meta.db within `serve.reload_seconds` (0.5 s) — the tests allow 2 s.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from dataclasses import dataclass

import httpx

from mlbox.clock import parse_iso
from mlbox.serve.router import TrafficSplit

from ._cases import GOOD
from .conftest import Server, deploy, mlbox, open_box, sample_rows, wait_for

TAKES_EFFECT_S = 2.0


def answer(server: Server, deployment: str, row: dict[str, object] = GOOD) -> dict[str, object]:
    response = server.predict(deployment, [row])
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_canary_gets_its_weight_of_the_traffic(shared_server: Server) -> None:
    deploy(shared_server, "split", "churn:1", canary="churn:2", weight=10)
    n = 2000
    variants: Counter[str] = Counter()
    models: dict[str, set[str]] = {}
    answers: dict[str, set[str]] = {}
    for _ in range(n):
        body = answer(shared_server, "split")
        variant = str(body["variant"])
        variants[variant] += 1
        models.setdefault(variant, set()).add(str(body["model"]))
        answers.setdefault(variant, set()).add(repr(body["predictions"]))
    share = variants["canary"] / n
    print(f"MEASURED canary share at weight 10: {share:.2%} of {n}")
    assert abs(share - 0.10) <= 0.03, variants
    assert models == {"primary": {"churn:1"}, "canary": {"churn:2"}}
    # one row, two models: each variant answers with its own model's (different) probabilities
    assert len(answers["primary"]) == len(answers["canary"]) == 1 and answers["primary"] != answers["canary"]
    metrics = shared_server.metrics()
    for variant, count in variants.items():
        assert metrics[f'mlbox_requests_total{{route="predict",deployment="split",variant="{variant}",status="200"}}'] == count


def test_sticky_key_pins_each_entity_to_one_variant(shared_server: Server) -> None:
    deploy(shared_server, "sticky", "churn:1")
    cli = mlbox(shared_server.home, "deploy", "canary", "sticky", "--model", "churn:2", "--weight", "50", "--sticky-key", "customer_id")
    assert cli.returncode == 0, cli.stderr
    served = shared_server.wait_serving("sticky")
    assert (served["canary_model"], served["canary_weight"], served["sticky_key"]) == ("churn:2", 50.0, "customer_id")
    split = TrafficSplit("sticky", "churn:1", "churn:2", 50.0, "customer_id")
    assigned = {}
    for key in range(1, 21):
        seen: Counter[tuple[object, object]] = Counter()
        for row in sample_rows(50, seed=key):  # the other features vary from request to request
            body = answer(shared_server, "sticky", {**row, "customer_id": key})
            seen[(body["variant"], body["model"])] += 1
        assert len(seen) == 1, f"customer {key} got {dict(seen)}"
        (variant, model), = seen
        assert variant == split.route(key), key  # the documented hash, not just any stable choice
        assert model == ("churn:2" if variant == "canary" else "churn:1")
        assigned[key] = variant
    assert set(assigned.values()) == {"primary", "canary"}


def committed_at(server: Server, action: str, deployment: str) -> float:
    """Wall-clock time (epoch s) at which the latest `action` on `deployment` was committed, from the audit log."""
    with open_box(server.home) as box:
        entry = box.audit.entries(limit=1, action=action, target=deployment)[0]
    return parse_iso(entry.ts).timestamp()


@dataclass(frozen=True)
class Sample:
    sent: float  # wall clock, epoch s
    received: float
    status: int | str
    variant: str | None
    model: str | None


class Traffic:
    """A client thread sending one request after another until stopped, recording every answer."""

    def __init__(self, server: Server, deployment: str) -> None:
        self.server, self.deployment = server, deployment
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.server.url, timeout=10) as client:
            while not self._stop.is_set():
                sent = time.time()
                try:
                    r = client.post(f"/v1/deployments/{self.deployment}/predict", json={"rows": [GOOD]}, headers=self.server.auth())
                    body = r.json() if r.status_code == 200 else {}
                    self.samples.append(Sample(sent, time.time(), r.status_code, body.get("variant"), body.get("model")))
                except httpx.HTTPError as exc:
                    self.samples.append(Sample(sent, time.time(), repr(exc), None, None))

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)


def test_rollback_takes_effect_quickly_and_fails_no_request(shared_server: Server) -> None:
    deploy(shared_server, "rb", "churn:1", canary="churn:2", weight=50)
    with Traffic(shared_server, "rb") as traffic:
        time.sleep(0.5)
        cli = mlbox(shared_server.home, "deploy", "rollback", "rb")
        assert cli.returncode == 0, cli.stderr
        committed = committed_at(shared_server, "deploy.rollback", "rb")
        wait_for(lambda: time.time() > committed + TAKES_EFFECT_S + 0.5, 10, "traffic after the rollback")
    samples = traffic.samples
    failed = [s for s in samples if s.status != 200]
    assert not failed, failed[:5]
    assert any(s.variant == "canary" for s in samples if s.received < committed), "the canary got no traffic before"
    last_canary = max(s.received for s in samples if s.variant == "canary")
    print(f"MEASURED rollback: last canary answer {last_canary - committed:.3f} s after the rollback was committed; "
          f"{len(samples)} requests during it, 0 failed")  # fmt: skip
    settled = [s for s in samples if s.sent >= committed + TAKES_EFFECT_S]
    assert len(settled) >= 20
    assert {(s.variant, s.model) for s in settled} == {("primary", "churn:1")}
    assert last_canary - committed <= TAKES_EFFECT_S
    assert shared_server.wait_serving("rb")["canary_weight"] == 0


def switch_time(server: Server, deployment: str, model: str, action: str) -> float:
    """Seconds from committing `action` until the deployment answers with `model` as its primary."""

    def switched() -> float | None:
        body = answer(server, deployment)
        return time.time() if (body["variant"], body["model"]) == ("primary", model) else None

    seen = wait_for(switched, 10, f"{deployment} to answer with {model}", interval=0.01)
    return float(seen) - committed_at(server, action, deployment)


def test_promote_and_rollback_take_effect_without_a_restart(shared_server: Server) -> None:
    deploy(shared_server, "promo", "churn:1", canary="churn:2", weight=0)
    pid = shared_server.proc.pid
    assert {(b["variant"], b["model"]) for b in (answer(shared_server, "promo") for _ in range(20))} == {("primary", "churn:1")}

    cli = mlbox(shared_server.home, "deploy", "promote", "promo")
    assert cli.returncode == 0, cli.stderr
    promoted = switch_time(shared_server, "promo", "churn:2", "deploy.promote")
    assert {(b["variant"], b["model"]) for b in (answer(shared_server, "promo") for _ in range(30))} == {("primary", "churn:2")}
    served = shared_server.wait_serving("promo")
    assert (served["primary_model"], served["previous_primary"], served["canary_model"]) == ("churn:2", "churn:1", None)

    cli = mlbox(shared_server.home, "deploy", "rollback", "promo")
    assert cli.returncode == 0, cli.stderr
    rolled_back = switch_time(shared_server, "promo", "churn:1", "deploy.rollback")
    print(f"MEASURED promote visible {promoted:.3f} s after its commit, rollback to the previous primary {rolled_back:.3f} s")
    assert promoted <= TAKES_EFFECT_S and rolled_back <= TAKES_EFFECT_S
    assert shared_server.proc.poll() is None and shared_server.proc.pid == pid  # the same server all along
    assert shared_server.wait_serving("promo")["revision"] == 4  # create, canary, promote, rollback


def test_deploy_status_shows_what_the_server_serves(shared_server: Server) -> None:
    deploy(shared_server, "shown", "churn:1", canary="churn:2", weight=25, sticky_key="customer_id")
    cli = mlbox(shared_server.home, "--json", "deploy", "status", "shown")
    assert cli.returncode == 0, cli.stderr
    (row,) = json.loads(cli.stdout)
    served = shared_server.wait_serving("shown")
    for key in ("primary_model", "canary_model", "canary_weight", "sticky_key", "shadow_model", "revision"):
        assert row[key] == served[key], key
