"""Bad requests and the error each must get: one table, run in-process (test_app.py) and against `mlbox serve`.

Every case expects mlbox's JSON error envelope with a 4xx status, a stable code and a
message naming the field at fault; `doc` is the OpenAPI path whose documented responses
must list that status (None for requests no route documents: unknown routes, wrong methods).
Deployments: `bad` serves churn:1 (plain rows) and never changes; `fs` serves churn_fs:1
(trained from the feature store). The server runs with serve.max_rows = 50.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

GOOD = {"x0": 0.5, "x1": -0.2, "x2": 1.1, "x3": 0.0, "x4": 2.0, "customer_id": 7, "segment": "b"}
MAX_ROWS = 50
DROP = object()
PREDICT = "/v1/deployments/bad/predict"
PREDICT_DOC = "/v1/deployments/{name}/predict"
FS_PREDICT = "/v1/deployments/fs/predict"
ONLINE = "/v1/features/online"
WELL_FORMED_UNKNOWN_TOKEN = "mlbx_0123456789ab_" + "A" * 43


def row(**changes: Any) -> dict[str, Any]:
    out = dict(GOOD)
    for key, value in changes.items():
        if value is DROP:
            out.pop(key)
        else:
            out[key] = value
    return out


def raw_row(field: str, literal: str) -> bytes:
    """A rows body whose `field` holds a JSON literal as written (NaN, 1e999, a 400-digit integer)."""
    fields = [f'"{k}": {json.dumps(v)}' for k, v in GOOD.items() if k != field]
    return ('{"rows": [{' + ", ".join([*fields, f'"{field}": {literal}']) + "}]}").encode()


@dataclass(frozen=True)
class Case:
    id: str
    status: int
    code: str
    mentions: tuple[str, ...] = ()
    body: Any = None  # a JSON value, raw bytes, or None for no body
    path: str = PREDICT
    method: str = "POST"
    auth: str | None = "service"  # a role with a token, None for no header, or a literal header value
    doc: str | None = PREDICT_DOC

    def request(self, tokens: dict[str, str]) -> dict[str, Any]:
        """Keyword arguments of httpx's `request(method, url, ...)` for this case."""
        headers: dict[str, str] = {}
        if self.auth in tokens:
            headers["Authorization"] = f"Bearer {tokens[self.auth]}"
        elif self.auth is not None:
            headers["Authorization"] = self.auth
        kw: dict[str, Any] = {"headers": headers}
        if self.body is not None:
            headers["Content-Type"] = "application/json"
            kw["content"] = self.body if isinstance(self.body, bytes) else json.dumps(self.body).encode()
        return kw


def _manage(
    action: str, id: str, body: Any, status: int, code: str, mentions: tuple[str, ...] = (), *,
    name: str = "bad", auth: str | None = "ml-engineer",
) -> Case:  # fmt: skip
    """A POST to a management action of deployment `name`."""
    return Case(f"{action}-{id}", status, code, mentions, body, f"/v1/deployments/{name}/{action}", auth=auth,
                doc=f"/v1/deployments/{{name}}/{action}")  # fmt: skip


CASES: list[Case] = [
    # fields of a row
    Case("missing-field", 422, "invalid", ("x3", "rows[0]"), {"rows": [row(x3=DROP)]}),
    Case("missing-field-second-row", 422, "invalid", ("segment", "rows[1]"), {"rows": [GOOD, row(segment=DROP)]}),
    Case("unknown-field", 422, "invalid", ("x9",), {"rows": [row(x9=1.0)]}),
    Case("string-for-numeric", 422, "invalid", ("x2", "number"), {"rows": [row(x2="1.5")]}),
    Case("bool-for-numeric", 422, "invalid", ("x1",), {"rows": [row(x1=True)]}),
    Case("object-for-numeric", 422, "invalid", ("x0",), {"rows": [row(x0={"value": 1})]}),
    Case("number-for-categorical", 422, "invalid", ("segment", "string"), {"rows": [row(segment=3)]}),
    Case("null-numeric", 422, "invalid", ("x4", "null"), {"rows": [row(x4=None)]}),
    Case("null-categorical", 422, "invalid", ("segment", "null"), {"rows": [row(segment=None)]}),
    Case("nan-literal", 400, "bad_request", ("NaN",), raw_row("x0", "NaN")),
    Case("infinity-literal", 400, "bad_request", ("Infinity",), raw_row("x1", "Infinity")),
    Case("minus-infinity-literal", 400, "bad_request", ("Infinity",), raw_row("x1", "-Infinity")),
    Case("float-overflowing-to-infinity", 422, "invalid", ("x0", "finite"), raw_row("x0", "1e999")),
    Case("float-beyond-float32", 422, "invalid", ("x0",), raw_row("x0", "1e300")),
    Case("integer-too-large-for-a-float", 422, "invalid", ("x0",), raw_row("x0", "9" * 400)),
    # shape of the body
    Case("rows-not-a-list", 422, "invalid", ('"rows"',), {"rows": GOOD}),
    Case("rows-empty", 422, "invalid", ('"rows"',), {"rows": []}),
    Case("row-not-an-object", 422, "invalid", ("rows[0]",), {"rows": [[0.5, -0.2]]}),
    Case("neither-rows-nor-entities", 400, "bad_request", ("rows", "entities"), {}),
    Case("both-rows-and-entities", 400, "bad_request", ("rows", "entities"), {"rows": [GOOD], "entities": [{"customer_id": 1}]}),
    Case("unknown-body-key", 422, "invalid", ("limit",), {"rows": [GOOD], "limit": 1}),
    Case("body-not-an-object", 400, "bad_request", ("JSON object",), [GOOD]),
    Case("too-many-rows", 413, "too_large", (str(MAX_ROWS + 1), str(MAX_ROWS)), {"rows": [GOOD] * (MAX_ROWS + 1)}),
    Case("malformed-json", 400, "bad_request", ("malformed JSON",), b'{"rows": [{"x0": 1'),
    Case("empty-body", 400, "bad_request", ("malformed JSON",), b""),
    Case("not-utf8", 400, "bad_request", ("UTF-8",), b'{"rows": [{"segment": "\xff\xfe"}]}'),
    Case("deeply-nested-json", 400, "bad_request", (), b"[" * 50_000 + b"]" * 50_000),
    # entity requests
    Case("entities-on-a-model-without-feature-store", 422, "invalid", ("feature store",), {"entities": [{"customer_id": 1001}]}),
    Case("entity-without-join-key", 422, "invalid", ("customer_id",), {"entities": [{"id": 1001}]}, FS_PREDICT),
    Case("entity-key-not-an-integer", 422, "invalid", ("customer_id",), {"entities": [{"customer_id": "abc"}]}, FS_PREDICT),
    Case("entity-key-too-large", 422, "invalid", ("customer_id",), {"entities": [{"customer_id": 10**30}]}, FS_PREDICT),
    Case("too-many-entities", 413, "too_large", (str(MAX_ROWS + 1),), {"entities": [{"customer_id": 1001}] * (MAX_ROWS + 1)}, FS_PREDICT),
    # routes, methods, deployments
    Case("unknown-deployment", 404, "not_found", ("nope",), {"rows": [GOOD]}, "/v1/deployments/nope/predict"),
    Case("unknown-route", 404, "not_found", ("/v1/nothing-here",), None, "/v1/nothing-here", "GET", doc=None),
    Case("unknown-action", 404, "not_found", ("explode",), {}, "/v1/deployments/bad/explode", auth="ml-engineer", doc=None),
    Case("get-on-predict", 405, "method_not_allowed", ("GET",), None, PREDICT, "GET", doc=None),
    Case("delete-a-deployment", 405, "method_not_allowed", ("DELETE",), None, "/v1/deployments/bad", "DELETE", doc=None),
    Case("unknown-deployment-get", 404, "not_found", ("nope",), None, "/v1/deployments/nope", "GET", "viewer", "/v1/deployments/{name}"),
    # authentication and permissions
    Case("missing-token", 401, "unauthenticated", ("token",), {"rows": [GOOD]}, auth=None),
    Case("not-a-bearer-token", 401, "unauthenticated", ("token",), {"rows": [GOOD]}, auth="Basic YWxpY2U6c2VjcmV0"),
    Case("malformed-token", 401, "unauthenticated", ("token",), {"rows": [GOOD]}, auth="Bearer not-a-token"),
    Case("unknown-token", 401, "unauthenticated", ("token",), {"rows": [GOOD]}, auth=f"Bearer {WELL_FORMED_UNKNOWN_TOKEN}"),
    Case("viewer-predicts", 403, "forbidden", ("viewer",), {"rows": [GOOD]}, auth="viewer"),
    Case("list-without-token", 401, "unauthenticated", (), None, "/v1/deployments", "GET", None, "/v1/deployments"),
    # deployment management (none of these changes anything)
    _manage("canary", "missing-model", {}, 422, "invalid", ("model",)),
    _manage("canary", "weight-not-a-number", {"model": "churn:2", "weight": "ten"}, 422, "invalid", ("weight",)),
    _manage("canary", "weight-bool", {"model": "churn:2", "weight": True}, 422, "invalid", ("weight",)),
    _manage("canary", "weight-over-100", {"model": "churn:2", "weight": 150}, 400, "bad_request", ("weight", "150")),
    _manage("canary", "weight-negative", {"model": "churn:2", "weight": -1}, 400, "bad_request", ("weight",)),
    _manage("canary", "unknown-model", {"model": "ghost:1"}, 404, "not_found", ("ghost",)),
    _manage("canary", "unknown-version", {"model": "churn:9"}, 404, "not_found", ("churn:9",)),
    _manage("canary", "primary-as-canary", {"model": "churn:1"}, 400, "bad_request", ("already the primary",)),
    _manage("canary", "other-signature", {"model": "churn_fs:1"}, 422, "invalid", ("different inputs",)),
    _manage("canary", "bad-sticky-key", {"model": "churn:2", "sticky_key": "Customer ID"}, 400, "bad_request", ("sticky key",)),
    _manage("canary", "sticky-key-not-a-string", {"model": "churn:2", "sticky_key": 5}, 400, "bad_request", ("sticky key",)),
    _manage("canary", "unknown-key", {"model": "churn:2", "pct": 5}, 422, "invalid", ("pct",)),
    _manage("canary", "malformed-json", b"{", 400, "bad_request", ("malformed JSON",)),
    _manage("canary", "body-not-an-object", [1], 400, "bad_request", ("JSON object",)),
    _manage("canary", "service-token", {"model": "churn:2"}, 403, "forbidden", ("service",), auth="service"),
    _manage("canary", "data-scientist-token", {"model": "churn:2"}, 403, "forbidden", ("data_scientist",), auth="data-scientist"),
    _manage("canary", "no-token", {"model": "churn:2"}, 401, "unauthenticated", (), auth=None),
    _manage("shadow", "missing-model", {}, 422, "invalid", ("model",)),
    _manage("shadow", "other-signature", {"model": "churn_fs:1"}, 422, "invalid", ("different inputs",)),
    _manage("promote", "without-canary", None, 409, "conflict", ("no canary",)),
    _manage("promote", "unknown-key", {"force": True}, 422, "invalid", ("force",)),
    _manage("promote", "unknown-deployment", None, 404, "not_found", ("nope",), name="nope"),
    _manage("rollback", "nothing", None, 409, "conflict", ("nothing to roll back",)),
    _manage("rollback", "viewer-token", None, 403, "forbidden", ("viewer",), auth="viewer"),
    # online features
    Case("online-wrong-keys", 400, "bad_request", ("features", "entities"), {"entities": [{"customer_id": 1001}]}, ONLINE, doc=ONLINE),
    Case("online-features-not-a-list", 422, "invalid", ('"features"',),
         {"features": "usage:calls", "entities": [{"customer_id": 1001}]}, ONLINE, doc=ONLINE),  # fmt: skip
    Case("online-entities-empty", 422, "invalid", ('"entities"',), {"features": ["usage:calls"], "entities": []}, ONLINE, doc=ONLINE),
    Case("online-too-many-entities", 413, "too_large", (str(MAX_ROWS + 1),),
         {"features": ["usage:calls"], "entities": [{"customer_id": 1001}] * (MAX_ROWS + 1)}, ONLINE, doc=ONLINE),  # fmt: skip
    Case("online-unknown-view", 404, "not_found", ("ghost",), {"features": ["ghost:x"], "entities": [{"customer_id": 1001}]}, ONLINE, doc=ONLINE),
    Case("online-unknown-field", 422, "invalid", ("nope",),
         {"features": ["usage:nope"], "entities": [{"customer_id": 1001}]}, ONLINE, doc=ONLINE),  # fmt: skip
    Case("online-entity-key-too-large", 422, "invalid", ("customer_id",),
         {"features": ["usage:calls"], "entities": [{"customer_id": 10**30}]}, ONLINE, doc=ONLINE),  # fmt: skip
    Case("online-viewer", 403, "forbidden", ("viewer",), {"features": ["usage:calls"], "entities": [{"customer_id": 1001}]},
         ONLINE, auth="viewer", doc=ONLINE),  # fmt: skip
]
IDS = [c.id for c in CASES]
assert len(set(IDS)) == len(IDS)
