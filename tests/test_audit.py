"""The tamper-evident audit chain: record, list, verify, and hand edits that verify must catch."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from mlbox import clock
from mlbox.box import Box
from mlbox.store import audit as audit_module
from mlbox.store.audit import AuditLog
from mlbox.store.sqlite import Database

from .conftest import OS_USER, raw_connect


@pytest.fixture
def filled(box: Box) -> Box:
    """A box with entries 1..6: the bootstrap admin, then five records."""
    for i in range(5):
        box.audit.record("alice", f"test.action{i}", f"target{i}", {"i": i, "note": "ünïcode ✓"})
    assert box.audit.verify().ok
    return box


def tamper(home: Path, *statements: str) -> None:
    """Edit meta.db by hand: drop the append-only triggers, then run `statements`."""
    conn = raw_connect(home / "meta.db")
    try:
        conn.execute("DROP TRIGGER IF EXISTS audit_no_update")
        conn.execute("DROP TRIGGER IF EXISTS audit_no_delete")
        for sql in statements:
            conn.execute(sql)
    finally:
        conn.close()


def test_record_returns_consecutive_seq_and_verifies(box: Box) -> None:
    first = box.audit.verify()
    assert first.ok and first.checked == 1  # the bootstrap admin
    seqs = [box.audit.record("alice", "x.y", "t", {"n": n}) for n in range(3)]
    assert seqs == [2, 3, 4]
    result = box.audit.verify()
    assert result.ok and result.checked == 4 and result.bad_seq is None


def test_empty_log_verifies(tmp_path: Path) -> None:
    from mlbox.store.migrations import migrate

    db = Database(tmp_path / "meta.db")
    migrate(db)
    result = AuditLog(db, b"k" * 32).verify()
    assert result.ok and result.checked == 0
    db.close()


def test_entries_newest_first_and_filters(filled: Box) -> None:
    entries = filled.audit.entries()
    assert [e.seq for e in entries] == [6, 5, 4, 3, 2, 1]
    assert entries[0].details == {"i": 4, "note": "ünïcode ✓"}
    assert entries[-1].action == "auth.user.add" and entries[-1].actor == "system"
    assert [e.seq for e in filled.audit.entries(limit=2)] == [6, 5]
    assert [e.seq for e in filled.audit.entries(action="test.")] == [6, 5, 4, 3, 2]
    assert [e.seq for e in filled.audit.entries(action="auth.")] == [1]
    assert [e.seq for e in filled.audit.entries(target="target2")] == [4]
    assert [e.seq for e in filled.audit.entries(actor="system")] == [1]
    # '_' in a prefix is literal, not a LIKE wildcard
    filled.audit.record("alice", "a_b.c")
    filled.audit.record("alice", "axb.c")
    assert [e.action for e in filled.audit.entries(action="a_b")] == ["a_b.c"]


def test_entries_since(filled: Box, monkeypatch: pytest.MonkeyPatch) -> None:
    later = clock.parse_iso("2099-01-01T00:00:00Z")
    monkeypatch.setattr(clock, "now", lambda: later)
    seq = filled.audit.record("alice", "future.thing")
    assert [e.seq for e in filled.audit.entries(since="2098-12-31")] == [seq]
    assert filled.audit.entries(since="2098-12-31")[0].ts == "2099-01-01T00:00:00.000000Z"


def test_record_joins_the_callers_transaction(box: Box) -> None:
    with pytest.raises(RuntimeError):
        with box.db.atomic():
            box.audit.record("alice", "will.vanish")
            raise RuntimeError
    assert [e.action for e in box.audit.entries()] == ["auth.user.add"]
    assert box.audit.verify().ok
    assert box.audit.record("alice", "next") == 2


def test_triggers_refuse_update_and_delete(filled: Box, home: Path) -> None:
    conn = raw_connect(home / "meta.db")
    try:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("UPDATE audit SET details = '{}' WHERE seq = 3")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("DELETE FROM audit WHERE seq = 3")
    finally:
        conn.close()
    assert filled.audit.verify().ok


def test_key_is_needed_to_verify(filled: Box) -> None:
    other = AuditLog(filled.db, b"\x00" * 32)
    result = other.verify()
    assert not result.ok and result.bad_seq == 1


# tampering --------------------------------------------------------------------------


def test_edited_details_are_caught(filled: Box, home: Path) -> None:
    tamper(home, """UPDATE audit SET details = '{"i":99}' WHERE seq = 4""")
    result = filled.audit.verify()
    assert not result.ok
    assert result.bad_seq == 4
    assert result.checked == 3
    assert "edited" in result.problem


def test_edited_actor_is_caught(filled: Box, home: Path) -> None:
    tamper(home, "UPDATE audit SET actor = 'mallory' WHERE seq = 2")
    result = filled.audit.verify()
    assert not result.ok and result.bad_seq == 2


def test_deleted_middle_entry_is_caught(filled: Box, home: Path) -> None:
    tamper(home, "DELETE FROM audit WHERE seq = 3")
    result = filled.audit.verify()
    assert not result.ok
    assert result.bad_seq == 3
    assert "missing" in result.problem or "deleted" in result.problem


def test_deleted_last_entry_is_caught(filled: Box, home: Path) -> None:
    tamper(home, "DELETE FROM audit WHERE seq = 6")
    result = filled.audit.verify()
    assert not result.ok
    assert result.bad_seq == 6
    assert "cut off" in result.problem


def test_swapped_entries_are_caught(filled: Box, home: Path) -> None:
    cols = "ts, actor, action, target, details, prev_hash, hash"
    tamper(
        home,
        f"CREATE TEMP TABLE keep AS SELECT seq, {cols} FROM audit WHERE seq IN (3, 4)",
        f"UPDATE audit SET ({cols}) = (SELECT {cols} FROM keep WHERE keep.seq = 4) WHERE seq = 3",
        f"UPDATE audit SET ({cols}) = (SELECT {cols} FROM keep WHERE keep.seq = 3) WHERE seq = 4",
    )
    result = filled.audit.verify()
    assert not result.ok
    assert result.bad_seq == 3


def test_renumbered_entries_are_caught(filled: Box, home: Path) -> None:
    """Delete entry 3 and shift the later ones down so the sequence has no gap."""
    tamper(
        home,
        "DELETE FROM audit WHERE seq = 3",
        "UPDATE audit SET seq = seq - 1 WHERE seq > 3",
        "UPDATE audit_head SET seq = seq - 1",
    )
    result = filled.audit.verify()
    assert not result.ok and result.bad_seq == 3


def test_truncation_with_rewritten_head_is_caught(filled: Box, home: Path) -> None:
    """Cutting the newest entry off and pointing the head at the new last entry needs no key.

    The head row is not authenticated, so whoever can edit meta.db can make a cut-off
    chain look whole; the module docstring promises that cut-off entries are noticed.
    """
    tamper(
        home,
        "DELETE FROM audit WHERE seq = 6",
        "UPDATE audit_head SET seq = 5, hash = (SELECT hash FROM audit WHERE seq = 5)",
    )
    result = filled.audit.verify()
    assert not result.ok
    assert result.bad_seq == 6


def test_missing_head_row_is_caught(filled: Box, home: Path) -> None:
    tamper(home, "DELETE FROM audit_head")
    result = filled.audit.verify()
    assert not result.ok and "head" in result.problem


def test_verify_does_not_block_writers(filled: Box, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """verify() reads one snapshot 'while writers go on': another process can still commit meanwhile."""
    inside, release = threading.Event(), threading.Event()
    real_digest = audit_module._digest

    def slow_digest(*args: object) -> str:
        inside.set()
        release.wait(10)
        return real_digest(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(audit_module, "_digest", slow_digest)
    results: list[object] = []
    thread = threading.Thread(target=lambda: results.append(filled.audit.verify()))
    thread.start()
    try:
        assert inside.wait(10)
        writer = Database(home / "meta.db", busy_timeout_ms=200)
        try:
            with writer.atomic():
                writer.execute("INSERT INTO box_meta (key, value) VALUES ('during-verify', '1')")
        finally:
            writer.close()
    finally:
        release.set()
        thread.join(10)
    assert results and results[0].ok  # type: ignore[attr-defined]


# CLI --------------------------------------------------------------------------------


def test_cli_verify_ok(filled: Box, home: Path, cli_run) -> None:  # type: ignore[no-untyped-def]
    result = cli_run("--home", str(home), "audit", "verify")
    assert result.exit_code == 0, result.stderr
    assert "6 entries verified" in result.stdout


def test_cli_verify_json(filled: Box, home: Path, cli_run) -> None:  # type: ignore[no-untyped-def]
    result = cli_run("--home", str(home), "--json", "audit", "verify")
    assert result.exit_code == 0
    assert result.json() == {"ok": True, "checked": 6, "bad_entry": None, "problem": ""}


@pytest.mark.parametrize(
    "statement, bad",
    [
        ("""UPDATE audit SET details = '{"i":99}' WHERE seq = 4""", 4),
        ("DELETE FROM audit WHERE seq = 3", 3),
        ("DELETE FROM audit WHERE seq = 6", 6),
    ],
)
def test_cli_verify_names_the_bad_entry(filled: Box, home: Path, cli_run, statement: str, bad: int) -> None:  # type: ignore[no-untyped-def]
    tamper(home, statement)
    result = cli_run("--home", str(home), "audit", "verify")
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:")
    assert f"entry {bad}" in lines[0]


def test_cli_audit_list(filled: Box, home: Path, cli) -> None:  # type: ignore[no-untyped-def]
    result = cli("--home", str(home), "--json", "audit", "list", "--action", "test.", "-n", "2")
    assert result.exit_code == 0, result.exception
    rows = result.json()
    assert [r["seq"] for r in rows] == [6, 5]
    assert rows[0]["details"] == {"i": 4, "note": "ünïcode ✓"}


def test_cli_audit_needs_permission(filled: Box, home: Path, cli, kernel_user) -> None:  # type: ignore[no-untyped-def]
    from mlbox.errors import PermissionDenied

    filled.identity.add_user(OS_USER, "bob", "data-scientist", os_user="bob")
    kernel_user("bob")
    result = cli("--home", str(home), "audit", "list")
    assert isinstance(result.exception, PermissionDenied)
