"""TrafficSplit as a plain value: weight edges, deterministic draws, sticky buckets that only ever move toward the canary."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest

from mlbox.serve.router import BUCKETS, TrafficSplit

KEYS = range(5000)


def split(weight: float, sticky_key: str | None = None, **changes: Any) -> TrafficSplit:
    return dataclasses.replace(TrafficSplit("churn", "churn:1", "churn:2", weight, sticky_key), **changes)


def canary_keys(s: TrafficSplit) -> set[int]:
    return {k for k in KEYS if s.route(k) == "canary"}


def test_weight_zero_always_primary() -> None:
    s = split(0)
    assert {s.route(draw=d) for d in (0.0, 1e-9, 0.5, 0.999999)} == {"primary"}
    assert canary_keys(split(0, "customer_id")) == set()


def test_no_canary_model_is_primary_whatever_the_weight() -> None:
    s = split(50, canary=None)
    assert {s.route(draw=d) for d in (0.0, 0.3, 0.9)} == {"primary"}
    assert s.model_for("canary") == "churn:1"


def test_weight_hundred_always_canary() -> None:
    s = split(100)
    assert {s.route(draw=d) for d in (0.0, 0.5, 0.999999)} == {"canary"}
    assert canary_keys(split(100, "customer_id")) == set(KEYS)


@pytest.mark.parametrize(("weight", "draw", "variant"), [
    (10, 0.0, "canary"), (10, 0.0999, "canary"), (10, 0.1, "primary"), (10, 0.5, "primary"),
    (30, 0.2999, "canary"), (30, 0.3, "primary"), (0.5, 0.004, "canary"), (0.5, 0.005, "primary"),
])  # fmt: skip
def test_draw_below_the_weight_goes_to_the_canary(weight: float, draw: float, variant: str) -> None:
    assert split(weight).route(draw=draw) == variant
    assert split(weight).route(draw=draw) == variant  # the same draw, the same answer


def test_random_draws_follow_the_weight() -> None:
    random.seed(1234)
    s = split(10)
    share = sum(s.route() == "canary" for _ in range(20_000)) / 20_000
    assert share == pytest.approx(0.10, abs=0.01)


def test_model_for_each_variant() -> None:
    s = split(10)
    assert (s.model_for("primary"), s.model_for("canary")) == ("churn:1", "churn:2")


def test_sticky_assignment_is_stable_per_key() -> None:
    s = split(50, "customer_id")
    first = {k: s.route(k) for k in KEYS}
    assert all(s.route(k) == v for k, v in first.items())
    # a new value object (as after a reload with another revision or shadow) keeps every assignment
    reloaded = split(50, "customer_id", revision=7, shadow="churn:3")
    assert all(reloaded.route(k) == v for k, v in first.items())
    # sticky ignores the random draw entirely
    assert all(s.route(k, draw=0.0) == v and s.route(k, draw=0.99) == v for k, v in list(first.items())[:200])


def test_sticky_buckets_are_uniform_and_follow_the_weight() -> None:
    for weight in (10, 30, 50):
        share = len(canary_keys(split(weight, "customer_id"))) / len(KEYS)
        assert share == pytest.approx(weight / 100, abs=0.03), weight
    buckets = [split(50, "customer_id").bucket(k) for k in KEYS]
    assert all(0 <= b < BUCKETS for b in buckets)


def test_raising_the_weight_only_moves_entities_from_primary_to_canary() -> None:
    weights = [0, 1, 5, 10, 25, 33.3, 50, 75, 99, 100]
    previous: set[int] = set()
    for w in weights:
        now = canary_keys(split(w, "customer_id"))
        assert previous <= now, f"raising the weight to {w} moved {len(previous - now)} entities back to primary"
        previous = now
    assert previous == set(KEYS)


def test_sticky_hash_depends_on_deployment_and_key_name() -> None:
    base = canary_keys(split(50, "customer_id"))
    other_deployment = canary_keys(split(50, "customer_id", deployment="fraud"))
    other_key = canary_keys(split(50, "account_id"))
    assert base != other_deployment and base != other_key


def test_sticky_without_a_key_value_falls_back_to_the_draw() -> None:
    s = split(10, "customer_id")
    assert s.route(None, draw=0.05) == "canary"
    assert s.route(None, draw=0.5) == "primary"
