"""What every HTTP route needs: the action its handler checks, or why it is public (tests walk it with every role).

Keys are (method, path) as the router names them, plus the predict route that `Api` dispatches
itself (api/predict.py). HEAD is answered like GET. tests/security/test_matrix_http.py fails on a
route missing here, an entry whose route is gone, and a handler whose check disagrees.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from mlbox.security.roles import READ


@dataclass(frozen=True)
class Public:
    """A route answered without a token; `reason` says why that reveals nothing a caller may not know."""

    reason: str


_PROBE = "a liveness probe: a constant answer, and load balancers call it without credentials"

ROUTES: Mapping[tuple[str, str], str | Public] = MappingProxyType({
    ("POST", "/v1/deployments/{name}/predict"): "predict",
    ("POST", "/v1/features/online"): "features.read_online",
    ("POST", "/v1/features/push"): "features.write",
    ("GET", "/v1/deployments"): READ,
    ("GET", "/v1/deployments/{name}"): READ,
    ("GET", "/v1/deployments/{name}/monitoring"): READ,
    ("POST", "/v1/deployments/{name}/{action:str}"): "deploy.manage",  # canary, shadow, promote, rollback
    # the management API of `mlbox tui --url` (api/manage.py); the console re-checks the CLI command's needs
    ("GET", "/v1/console/me"): READ,
    ("GET", "/v1/console/pulse"): READ,
    ("GET", "/v1/console/deployments"): READ,
    ("GET", "/v1/console/deployments/{name}"): READ,
    ("POST", "/v1/console/deployments/{name}/check"): READ,  # a drift check reads the log, stores its result
    ("GET", "/v1/console/deployments/{name}/predictions"): READ,  # protected inputs masked without read_pii
    ("POST", "/v1/console/deployments/{name}/{change}"): "deploy.manage",  # weight, canary, rollback, shadow
    ("GET", "/v1/console/jobs"): READ,
    ("POST", "/v1/console/jobs/train"): "train.run",  # and jobs.submit, which every role with train.run has
    ("GET", "/v1/console/jobs/train-spec"): READ,
    ("GET", "/v1/console/jobs/{id:int}/log"): READ,
    ("POST", "/v1/console/jobs/{id:int}/{change}"): "jobs.submit",  # cancel, retry (your own; an admin, any)
    ("GET", "/v1/console/runs"): READ,
    ("GET", "/v1/console/runs/{id}"): READ,
    ("GET", "/v1/console/models"): READ,
    ("GET", "/v1/console/models/{ref}"): READ,
    ("POST", "/v1/console/models/{ref}/{change}"): "models.promote",  # promote, archive
    ("GET", "/v1/console/features"): READ,
    ("GET", "/v1/console/features/{view}"): READ,
    ("GET", "/v1/console/checks"): READ,
    ("GET", "/v1/console/checks/{id:int}"): READ,
    ("GET", "/v1/console/audit"): "audit.read",
    ("GET", "/v1/console/audit/verify"): "audit.read",
    ("GET", "/healthz"): Public(_PROBE),
    ("GET", "/livez"): Public(_PROBE),
    ("GET", "/readyz"): Public("a readiness probe: ready or not, with counts of deployments and problems; names only with 'read'"),
    ("GET", "/metrics"): Public("Prometheus scrapes without credentials: request counters and latencies, no data or secrets"),
    ("GET", "/openapi.json"): READ,  # it names every deployment's input fields
    ("GET", "/schema.json"): READ,
})  # fmt: skip

MANAGE_ACTIONS = ("canary", "shadow", "promote", "rollback")  # the values of {action} the manage route answers
