"""Remote mode: the same screens against a real `mlbox serve`, through its management API and `RemoteClient`.

One server per module on a copy of the TUI template box, with a token per user. The reads a remote
client gets equal what `LocalClient` reads on the box; Pilot drives every screen and a change through
the real server; every change of the management API lands in the audit log with its reason and
`via: http`; what a role lacks is refused by the server (403, audited) and absent from the screens.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Input, Static

from mlbox.config import load_settings
from mlbox.errors import AuthError, Conflict, NotFound, PermissionDenied, UsageError
from mlbox.tui.app import MlboxApp
from mlbox.tui.confirm import Confirm
from mlbox.tui.local import LocalClient
from mlbox.tui.remote import RemoteClient
from mlbox.tui.screens.base import TableScreen

from ..conftest import MLBOX_SCRIPT, OS_USER
from ..serve.conftest import Server, free_port, running_server, subprocess_env
from ._pilot import keys_shown, press, settle, table_rows
from .conftest import ENVIRON, USERS, Template, open_box

pytestmark = pytest.mark.slow


@dataclasses.dataclass
class World:
    server: Server
    home: Path
    tokens: dict[str, str]  # user -> token

    def client(self, user: str = OS_USER) -> RemoteClient:
        return RemoteClient(self.server.url, self.tokens[user])

    def local(self, user: str = OS_USER) -> LocalClient:
        return LocalClient(load_settings(self.home, environ=ENVIRON), token=self.tokens[user])

    def latest(self, action: str) -> dict[str, Any]:
        with open_box(self.home) as box:
            return box.audit.entries(limit=1, action=action)[0].as_dict()


@pytest.fixture(scope="module")
def world(tui_template: Template, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    home = tmp_path_factory.mktemp("remote") / "box"
    shutil.copytree(tui_template.home, home)
    with open_box(home) as box:
        tokens = {user: box.identity.create_token(OS_USER, user, never_expires=True)[1]
                  for user in (OS_USER, *USERS.values())}  # fmt: skip
        tokens["scoped"] = box.identity.create_token(OS_USER, "mel", never_expires=True, deployments=["churn_api"])[1]
    with running_server(home, {"admin": tokens[OS_USER], "viewer": tokens["vic"]}, MLBOX_SERVE_RELOAD_SECONDS="0.2") as server:
        yield World(server, home, tokens)


def drive(client: RemoteClient, script: Callable[[MlboxApp, Pilot[Any]], Awaitable[None]]) -> MlboxApp:
    app = MlboxApp(client, refresh_s=60)

    async def go() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            await settle(pilot)
            await script(app, pilot)

    asyncio.run(go())
    return app


# reads ------------------------------------------------------------------------------------------


def test_a_remote_client_reads_what_the_local_client_reads(world: World) -> None:
    remote, local = world.client(), world.local()
    remote.me()  # a token's first use of the day is audited as a login: let it land before comparing pages
    assert remote.me() == local.me() and remote.me().role == "admin"
    assert remote.deployments() == local.deployments()
    assert remote.models() == local.models()
    assert remote.features() == local.features()
    assert remote.runs() == local.runs() and len(remote.runs().rows) == 2
    assert remote.checks() == local.checks() and remote.checks().rows[0]["verdict"] == "drift"
    assert remote.audit(50) == local.audit(50)
    assert remote.verify_audit() == local.verify_audit()
    assert remote.check_detail(1) == local.check_detail(1)
    assert remote.model_detail("churn:2") == local.model_detail("churn:2")
    assert remote.deployment_detail("churn_api") == local.deployment_detail("churn_api")
    assert remote.job_log(1) == local.job_log(1) and remote.job_log(1)["text"] == ""  # queued: no log yet
    run = remote.runs().rows[0]["id"]
    assert remote.run_detail(run) == local.run_detail(run)
    for view in (r["view"] for r in remote.features()):
        assert remote.view_detail(view) == local.view_detail(view)
    assert remote.train_spec() == local.train_spec()
    jobs = remote.jobs()
    assert jobs == local.jobs() and [j["id"] for j in jobs.rows] == sorted((j["id"] for j in jobs.rows), reverse=True)
    here, there = local.pulse(), remote.pulse()
    assert there.server.state == "up" and there.server.url == world.server.url
    assert dataclasses.replace(there, server=here.server, disk=here.disk) == here
    assert there.disk["total"] > 0 and "meta.db" in there.disk


def test_a_remote_viewer_gets_protected_values_masked_by_the_server(world: World) -> None:
    """`customer_profile.email` is pii: the server masks it for a viewer; the admin's token reads it raw."""
    seen: dict[str, Any] = {}
    for user in ("vic", OS_USER):
        d = world.client(user).view_detail("customer_profile")
        column = d["sample"]["columns"].index("email")
        seen[user] = (d["sample"]["masked"], {row[column] for row in d["sample"]["rows"]})
    assert seen["vic"] == (["email"], {"***"})
    assert seen[OS_USER][0] == [] and all(str(e).endswith("@example.ae") for e in seen[OS_USER][1])


def test_every_screen_remotely(world: World) -> None:
    seen: dict[str, Any] = {}

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        seen["pulse"] = str(app.screen.query_one("#server", Static).render())
        for key in "2345678":
            await press(pilot, key)
            screen = app.screen
            assert isinstance(screen, TableScreen), (key, screen)
            seen[key] = table_rows(app)

    drive(world.client(), script)
    assert f"✓ up  {world.server.url}" in seen["pulse"]
    assert [r["status"] for r in seen["2"]] == ["finished", "finished"]
    assert {r["model"] for r in seen["3"]} >= {"churn:1", "churn:2"}
    assert seen["4"][0]["name"] == "churn_api" and seen["4"][0]["canary"] == "churn:2"
    assert {r["user"] for r in seen["5"]} >= {OS_USER, "ana"}
    assert seen["6"] and all("view" in r for r in seen["6"])
    assert {r["variant"] for r in seen["7"]} == {"primary", "canary"}
    assert seen["8"] and seen["8"][0]["seq"] > seen["8"][-1]["seq"]


def test_a_remote_viewer_sees_no_change_and_the_server_refuses_one(world: World) -> None:
    seen: dict[str, Any] = {}

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        seen["pulse"] = keys_shown(app)
        await press(pilot, "4")
        seen["deploy"] = keys_shown(app)
        await press(pilot, "W")
        seen["after_W"] = type(app.screen).__name__

    drive(world.client("vic"), script)
    assert "go('audit')" not in seen["pulse"] and not {"weights", "canary"} & seen["deploy"]
    assert seen["after_W"] == "DeploymentsScreen"
    with pytest.raises(PermissionDenied, match="deploy.manage"):
        world.client("vic").set_canary_weight("churn_api", 50, "no")
    with pytest.raises(PermissionDenied, match="deploy.manage"):
        world.client("vic").set_canary("churn_api", "churn:2", 50, "no")
    with pytest.raises(PermissionDenied, match="audit.read"):
        world.client("vic").audit()
    denied = world.latest("auth.denied")
    assert denied["actor"] == "vic" and denied["details"]["via"] == "http"
    with open_box(world.home) as box:
        assert box.deployments.get("churn_api").canary_weight == 10.0


# changes ------------------------------------------------------------------------------------------


def test_a_weight_changed_remotely_is_audited_and_served(world: World) -> None:
    seen: dict[str, Any] = {}

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        await press(pilot, "4", "W", "right", "right", "enter")  # 90/10 -> 80/20
        assert isinstance(app.screen, Confirm)
        seen["diff"] = str(app.screen.query_one("#diff", Static).render())
        app.screen.query_one("#reason", Input).value = "remote step"
        await press(pilot, "tab", "enter")  # from Cancel (the default focus) to Apply
        seen["rows"] = table_rows(app)

    drive(world.client(), script)
    assert seen["diff"].startswith("change:   90/10 → 80/20")
    assert seen["rows"][0]["split"] == "80/20"
    entry = world.latest("deploy.canary")
    assert entry["actor"] == OS_USER
    assert entry["details"] == {"model": "churn:2", "weight": 20.0, "sticky_key": None, "reason": "remote step", "via": "http"}
    served = world.server.wait_serving("churn_api")
    assert served["canary_weight"] == 20.0


def test_every_change_of_the_management_api(world: World) -> None:
    admin, ana = world.client(), world.client("ana")
    assert admin.set_shadow("churn_api", "churn:1", "watch it")["shadow"] == "churn:1"
    assert world.latest("deploy.shadow")["details"]["reason"] == "watch it"
    assert admin.set_shadow("churn_api", None, "")["shadow"] == ""
    promoted = admin.promote_model("churn:2", "staging", None, "ready")
    assert "staging" in promoted["aliases"]
    assert world.latest("models.promote")["details"] == {"alias": "staging", "from": None, "reason": "ready", "via": "http"}
    with pytest.raises(Conflict):  # compare-and-set: the alias holds 2 now, not 1
        admin.promote_model("churn:1", "staging", 1, "stale screen")
    job = ana.submit_train(ana.train_spec(), "nightly")
    assert (job["type"], job["user"], job["status"]) == ("train", "ana", "queued")
    assert world.latest("jobs.submit")["details"]["reason"] == "nightly"
    with pytest.raises(PermissionDenied):  # ana may cancel her own jobs only
        ana.cancel_job(1, "not mine")
    assert ana.cancel_job(job["id"], "oops")["status"] == "cancelled"
    assert ana.retry_job(job["id"], "again")["status"] == "queued"
    assert world.latest("jobs.retry")["details"] == {"was": "cancelled", "reason": "again", "via": "http"}
    check = admin.drift_check("churn_api")
    assert check["deployment"] == "churn_api" and set(check["variants"]) == {"primary", "canary"}
    assert admin.set_canary("churn_api", "churn:2", 30, "wider")["split"] == "70/30"
    assert world.latest("deploy.canary")["details"] == {"model": "churn:2", "weight": 30.0, "sticky_key": None,
                                                        "reason": "wider", "via": "http"}  # fmt: skip
    with pytest.raises(UsageError, match="already the primary"):
        admin.set_canary("churn_api", "churn:1", 10, "")
    rolled = admin.rollback("churn_api", "bad canary")
    assert rolled["canary_weight"] == 0.0
    assert world.latest("deploy.rollback")["details"]["reason"] == "bad canary"
    archived = admin.archive_model("churn:1", "superseded")
    assert archived["archived"] is True
    with open_box(world.home) as box:
        assert box.audit.verify().ok


# errors -------------------------------------------------------------------------------------------


def test_errors_come_back_as_the_servers_own(world: World) -> None:
    with pytest.raises(NotFound, match="nope"):
        world.client().rollback("nope", "")
    with pytest.raises(AuthError):
        RemoteClient(world.server.url, "mlbx_not_a_token").me()
    with pytest.raises(PermissionDenied, match="scoped"):
        RemoteClient(world.server.url, world.tokens["scoped"]).me()
    gone = RemoteClient(f"http://127.0.0.1:{free_port()}", world.tokens[OS_USER])
    pulse = gone.pulse()  # nothing listens there: Pulse says down instead of failing every refresh
    assert pulse.server.state == "down" and pulse.deployments == []
    r = world.server.client.post("/v1/console/jobs/train", json={"spec": "/etc/passwd"}, headers=world.server.auth("admin"))
    assert r.status_code == 422 and "spec" in r.json()["error"]["message"]  # the box's train.yaml only


def test_the_command_needs_a_token_for_a_url(tmp_path: Path) -> None:
    env = subprocess_env(tmp_path / "nobox")
    env.pop("MLBOX_TOKEN", None)
    done = subprocess.run([str(MLBOX_SCRIPT), "tui", "--url", "http://127.0.0.1:9"], env=env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode != 0
    assert "--url needs a token" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_every_change_driven_through_the_screens_remotely(world: World) -> None:
    """After the API test above: churn_api serves churn:1 with churn:2 at weight 0, churn:1 is archived, churn:2
    holds staging; ana's train job is queued. Each change below goes key, dialog, Apply, through the server."""
    from mlbox.tui.choose import Choose

    from .test_more_actions import apply_with

    seen: dict[str, Any] = {}

    async def deployments(app: MlboxApp, pilot: Pilot[Any]) -> None:
        await press(pilot, "4", "S")
        assert isinstance(app.screen, Choose)
        await press(pilot, "enter")
        await apply_with(app, pilot, "watch it")
        await press(pilot, "W", *["right"] * 6, "enter")  # 100/0 -> 70/30
        await apply_with(app, pilot, "step")
        seen["weighted"] = world.latest("deploy.canary")["details"]["reason"]
        await press(pilot, "C")
        assert isinstance(app.screen, Choose)  # churn:2 only: churn:1 is the primary (and archived)
        await press(pilot, "enter", "right", "right", "enter")  # the canary's model kept, 70/30 -> 60/40
        await apply_with(app, pilot, "canary up")
        seen["canary"] = table_rows(app)[0]["split"]
        await press(pilot, "R")
        await apply_with(app, pilot, "errors up")
        seen["deployment"] = table_rows(app)[0]

    drive(world.client("mel"), deployments)
    assert (seen["deployment"]["shadow"], seen["deployment"]["split"]) == ("churn:2", "100/0")
    assert seen["weighted"] == "step" and seen["canary"] == "60/40"
    for action, reason in (("deploy.shadow", "watch it"), ("deploy.canary", "canary up"), ("deploy.rollback", "errors up")):
        entry = world.latest(action)
        assert (entry["actor"], entry["details"]["reason"], entry["details"]["via"]) == ("mel", reason, "http")

    async def models(app: MlboxApp, pilot: Pilot[Any]) -> None:
        await press(pilot, "3")
        row = [r["model"] for r in table_rows(app)].index("churn:2")
        await press(pilot, *["down"] * row, "P")
        assert isinstance(app.screen, Choose)
        await press(pilot, "down", "enter")  # production
        await apply_with(app, pilot, "go live")
        await press(pilot, "A")
        await apply_with(app, pilot, "retire")
        seen["models"] = {r["model"]: (r["archived"], r["aliases"]) for r in table_rows(app)}

    drive(world.client("mel"), models)
    assert seen["models"]["churn:2"] == (True, "")
    assert world.latest("models.promote")["details"]["reason"] == "go live"
    assert world.latest("models.archive")["details"] == {"aliases_removed": ["production", "staging"], "reason": "retire",
                                                          "via": "http"}  # fmt: skip

    async def jobs(app: MlboxApp, pilot: Pilot[Any]) -> None:
        await press(pilot, "5")
        seen["first"] = table_rows(app)[0]
        await press(pilot, "X")
        await apply_with(app, pilot, "wrong data")
        await press(pilot, "Y")
        await apply_with(app, pilot, "right data")
        await press(pilot, "T")
        await apply_with(app, pilot, "again")
        seen["jobs"] = table_rows(app)

    drive(world.client("ana"), jobs)
    first = seen["first"]
    assert (first["user"], first["type"], first["status"]) == ("ana", "train", "queued")
    assert seen["jobs"][0]["id"] == first["id"] + 1 and seen["jobs"][1]["status"] == "queued"
    assert [world.latest(a)["details"]["reason"] for a in ("jobs.cancel", "jobs.retry", "jobs.submit")] == [
        "wrong data", "right data", "again"]  # fmt: skip

    async def monitoring(app: MlboxApp, pilot: Pilot[Any]) -> None:
        await press(pilot, "7", "C")
        assert isinstance(app.screen, Confirm)
        app.screen.query_one("#apply").focus()
        await press(pilot, "enter")
        seen["checks"] = table_rows(app)

    with open_box(world.home) as box:
        before = box.db.one("SELECT count(*) AS n FROM monitor_checks")["n"]  # type: ignore[index]
    drive(world.client("vic"), monitoring)
    with open_box(world.home) as box:
        last = box.db.one("SELECT checked_by FROM monitor_checks ORDER BY id DESC LIMIT 1")
        assert box.db.one("SELECT count(*) AS n FROM monitor_checks")["n"] == before + 1  # type: ignore[index]
    assert last is not None and last["checked_by"] == "vic"

    async def audit(app: MlboxApp, pilot: Pilot[Any]) -> None:
        await press(pilot, "8", "v")
        seen["verified"] = str(app.screen.query_one("#title", Static).render())

    drive(world.client(), audit)
    assert seen["verified"].startswith(" ✓ audit chain intact")


# the prediction log (last in the module: it fills churn_api's log) ------------------------------


def test_a_remote_client_pages_the_prediction_log_as_the_local_client_does(world: World) -> None:
    from .test_predictions import FILES, PER_FILE, every_page, write_log

    write_log(world.home)
    for user in (OS_USER, "vic"):
        remote, local = world.client(user), world.local(user)
        there, pages = every_page(remote, 400)
        here, _ = every_page(local, 400)
        assert there == here and len(there) == FILES * PER_FILE and len(pages) == 5
        assert remote.predictions("churn_api", 50, None, "canary", True) == local.predictions("churn_api", 50, None, "canary", True)
    with pytest.raises(NotFound, match="no deployment 'nope'"):
        world.client().predictions("nope")


@pytest.mark.parametrize(("query", "message"), [
    ("limit=0", "'limit' must be between 1 and 1000"),
    ("before=zzz", "not a page cursor"),
    ("variant=blue", "unknown variant 'blue'"),
    ("errors=maybe", "'errors' must be true or false"),
])  # fmt: skip
def test_a_bad_log_page_request_is_a_4xx_naming_what_to_fix(world: World, query: str, message: str) -> None:
    import httpx

    r = httpx.get(f"{world.server.url}/v1/console/deployments/churn_api/predictions?{query}",
                  headers={"Authorization": f"Bearer {world.tokens['vic']}"}, trust_env=False)  # fmt: skip
    assert r.status_code in (400, 422) and message in r.json()["error"]["message"]
