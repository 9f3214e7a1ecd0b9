"""An emptied or cut audit log fails verification; signed evidence bundles verify without mlbox."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mlbox.box import Box
from mlbox.store.audit import AuditLog
from mlbox.store.migrations import migrate
from mlbox.store.sqlite import Database

from ..conftest import OS_USER, raw_connect

ROOT = Path(__file__).resolve().parents[2]
VERIFIER = ROOT / "docs" / "tools" / "verify_evidence.py"
OPENSSL = shutil.which("openssl")  # looked up at import: the clean_env fixture narrows PATH


@pytest.fixture
def filled(box: Box) -> Box:
    """Entries 1..6: the bootstrap admin, then five records (outside any transaction: the anchor is written)."""
    for i in range(5):
        box.audit.record(OS_USER, f"test.action{i}", f"target{i}", {"i": i, "note": "ünïcode ✓"})
    assert box.audit.verify().ok
    assert (box.paths.keys / "audit.anchor").is_file()
    return box


def tamper(home: Path, *statements: str) -> None:
    """What an attacker with write access to meta.db does: drop the append-only triggers, then edit."""
    conn = raw_connect(home / "meta.db")
    try:
        conn.execute("DROP TRIGGER IF EXISTS audit_no_update")
        conn.execute("DROP TRIGGER IF EXISTS audit_no_delete")
        for sql in statements:
            conn.execute(sql)
    finally:
        conn.close()


def one_red_line(cli_run: Any, home: Path) -> str:
    result = cli_run("--home", str(home), "audit", "verify")
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return str(lines[0])


# an emptied or truncated log ----------------------------------------------------------------


def test_all_rows_and_head_deleted_fails(filled: Box, home: Path, cli_run: Any) -> None:
    tamper(home, "DELETE FROM audit", "DELETE FROM audit_head")
    result = filled.audit.verify()
    assert not result.ok and result.checked == 0
    assert "emptied" in result.problem
    assert "emptied" in one_red_line(cli_run, home)


def test_all_rows_deleted_head_kept_fails(filled: Box, home: Path, cli_run: Any) -> None:
    tamper(home, "DELETE FROM audit")
    result = filled.audit.verify()
    assert not result.ok and result.bad_seq == 1
    assert "head records entry 6" in one_red_line(cli_run, home)


@pytest.mark.parametrize("k", [1, 3])
def test_last_k_rows_deleted_fails(filled: Box, home: Path, cli_run: Any, k: int) -> None:
    tamper(home, f"DELETE FROM audit WHERE seq > {6 - k}")
    result = filled.audit.verify()
    assert not result.ok and result.checked == 6 - k
    assert "cut off the end" in one_red_line(cli_run, home)


def test_last_rows_and_head_deleted_fails(filled: Box, home: Path) -> None:
    tamper(home, "DELETE FROM audit WHERE seq > 3", "DELETE FROM audit_head")
    result = filled.audit.verify()
    assert not result.ok and "head record is missing" in result.problem


def test_head_deleted_fails(filled: Box, home: Path, cli_run: Any) -> None:
    tamper(home, "DELETE FROM audit_head")
    assert not filled.audit.verify().ok
    assert "head record is missing" in one_red_line(cli_run, home)


def test_middle_row_edited_fails(filled: Box, home: Path, cli_run: Any) -> None:
    tamper(home, "UPDATE audit SET actor = 'mallory' WHERE seq = 3")
    result = filled.audit.verify()
    assert not result.ok and result.bad_seq == 3
    assert "entry 3" in one_red_line(cli_run, home)


def test_edited_anchor_fails(filled: Box, home: Path) -> None:
    anchor = filled.paths.keys / "audit.anchor"
    body = json.loads(anchor.read_text())
    anchor.write_text(json.dumps({**body, "hash": "f" * 64}))
    result = filled.audit.verify()
    assert not result.ok and "anchor" in result.problem


def test_anchor_is_written_by_verify_when_entries_came_inside_transactions(filled: Box, home: Path) -> None:
    anchor = filled.paths.keys / "audit.anchor"
    anchor.unlink()
    with filled.db.atomic():
        filled.audit.record(OS_USER, "test.inside", "t")
    assert not anchor.exists()  # entry 1 of a still-open transaction could roll back: no anchor yet
    assert filled.audit.verify().ok and anchor.exists()
    assert stat.S_IMODE(anchor.stat().st_mode) == 0o600
    tamper(home, "DELETE FROM audit", "DELETE FROM audit_head")
    assert not filled.audit.verify().ok


def test_a_log_never_written_verifies(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    db = Database(tmp_path / "meta.db")
    try:
        migrate(db)
        log = AuditLog(db, b"k" * 32)
        assert log.verify().ok and not (tmp_path / "keys" / "audit.anchor").exists()
        log.record(OS_USER, "first", "t")
        assert (tmp_path / "keys" / "audit.anchor").exists() and log.verify().ok
    finally:
        db.close()


# evidence bundles ---------------------------------------------------------------------------


def export(cli_run: Any, home: Path, out: Path, *extra: str) -> dict[str, Any]:
    result = cli_run("--home", str(home), "--json", "audit", "export", "--out", str(out), *extra)
    assert result.exit_code == 0, result.stderr
    return dict(result.json())


def verifier(bundle: Path, *args: str, stdlib_only: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the standalone verifier as an auditor would; `-S` leaves only the standard library."""
    python = [sys.executable, "-S"] if stdlib_only else [sys.executable]
    return subprocess.run([*python, str(VERIFIER), str(bundle), *args], capture_output=True, text=True, timeout=60)


def test_export_and_verify_with_the_script(filled: Box, home: Path, tmp_path: Path, cli_run: Any) -> None:
    out = tmp_path / "evidence" / "bundle.json"
    info = export(cli_run, home, out)
    assert (info["first_seq"], info["last_seq"]) == (1, 6)
    payload = json.loads(out.read_text())["payload"]
    assert [e["seq"] for e in payload["entries"]] == [1, 2, 3, 4, 5, 6]
    assert payload["head"]["seq"] == 6 and payload["link"] == {"seq": 0, "hash": "0" * 64}
    fingerprint = info["fingerprint_sha256"]
    assert payload["public_key"]["fingerprint_sha256"] == fingerprint
    done = verifier(out, "--public-key-fingerprint", fingerprint)
    assert done.returncode == 0, done.stderr
    assert "chain OK: 6 entries" in done.stdout and "signature OK" in done.stdout
    key = filled.paths.keys / "audit-sign.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    # the export itself is audited, and the same key signs the next bundle
    last = filled.audit.entries(limit=1)[0]
    assert last.action == "audit.export" and last.details["fingerprint"] == fingerprint
    assert export(cli_run, home, tmp_path / "b2.json")["fingerprint_sha256"] == fingerprint


def test_plain_output_prints_the_fingerprint(filled: Box, home: Path, tmp_path: Path, cli_run: Any) -> None:
    result = cli_run("--home", str(home), "audit", "export", "--out", str(tmp_path / "b.json"))
    assert result.exit_code == 0, result.stderr
    fingerprint = json.loads((tmp_path / "b.json").read_text())["payload"]["public_key"]["fingerprint_sha256"]
    assert fingerprint in result.stdout.replace("\n", "")


def test_stdlib_script_plus_openssl(filled: Box, home: Path, tmp_path: Path, cli_run: Any) -> None:
    """The documented procedure without `cryptography`: the script checks the chain, openssl the signature."""
    out = tmp_path / "bundle.json"
    fingerprint = export(cli_run, home, out)["fingerprint_sha256"]
    alone = verifier(out, stdlib_only=True)
    assert alone.returncode == 3 and "signature NOT checked" in alone.stderr  # never a silent pass
    parts = tmp_path / "parts"
    done = verifier(out, "--public-key-fingerprint", fingerprint, "--extract", str(parts), stdlib_only=True)
    assert done.returncode == 0, done.stderr
    assert "openssl pkeyutl -verify" in done.stdout
    if OPENSSL is None:
        pytest.skip("openssl is not installed: the signature step cannot be run here")
    ok = openssl_verify(parts)
    assert ok.returncode == 0 and "Signature Verified Successfully" in ok.stdout, ok.stdout + ok.stderr
    # an attacker who edits an entry and recomputes every SHA-256 still cannot sign
    bundle = json.loads(out.read_text())
    forge(bundle, 2, actor="mallory")
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(bundle))
    forged_parts = tmp_path / "forged_parts"
    assert verifier(forged, "--extract", str(forged_parts), stdlib_only=True).returncode == 0  # chain consistent
    assert openssl_verify(forged_parts).returncode != 0


def openssl_verify(parts: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(OPENSSL), "pkeyutl", "-verify", "-pubin", "-inkey", str(parts / "public.pem"), "-rawin",
         "-in", str(parts / "payload.bin"), "-sigfile", str(parts / "signature.bin")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def forge(bundle: dict[str, Any], index: int, **changes: Any) -> None:
    """Edit one entry and recompute the public SHA-256 chain, as a careful forger would."""
    from mlbox.store.evidence import entry_sha256

    payload = bundle["payload"]
    payload["entries"][index].update(changes)
    prev = payload["link"]["hash"]
    for entry in payload["entries"]:
        prev = entry["sha256"] = entry_sha256(prev, entry)
    payload["chain_sha256"] = prev


@pytest.mark.parametrize("stdlib_only", [False, True])
def test_one_edited_entry_fails_the_script(
    filled: Box, home: Path, tmp_path: Path, cli_run: Any, stdlib_only: bool
) -> None:
    out = tmp_path / "bundle.json"
    export(cli_run, home, out)
    bundle = json.loads(out.read_text())
    bundle["payload"]["entries"][3]["details"] = '{"i":99}'
    out.write_text(json.dumps(bundle))
    done = verifier(out, "--extract", str(tmp_path / "parts"), stdlib_only=stdlib_only)
    assert done.returncode == 1 and "entry 4 does not match its SHA-256" in done.stderr


def test_forged_chain_fails_the_signature(filled: Box, home: Path, tmp_path: Path, cli_run: Any) -> None:
    out = tmp_path / "bundle.json"
    export(cli_run, home, out)
    bundle = json.loads(out.read_text())
    forge(bundle, 0, action="nothing.happened")
    out.write_text(json.dumps(bundle))
    done = verifier(out)
    assert done.returncode == 1 and "signature does not match" in done.stderr


def test_dropped_entry_and_wrong_pin_fail(filled: Box, home: Path, tmp_path: Path, cli_run: Any) -> None:
    out = tmp_path / "bundle.json"
    export(cli_run, home, out)
    assert verifier(out, "--public-key-fingerprint", "ab" * 32).returncode == 1
    bundle = json.loads(out.read_text())
    del bundle["payload"]["entries"][2]
    out.write_text(json.dumps(bundle))
    done = verifier(out)
    assert done.returncode == 1 and "entry 3 is missing" in done.stderr


def test_since_links_to_the_entry_before(filled: Box, home: Path, tmp_path: Path, cli_run: Any) -> None:
    rows = {r["seq"]: r for r in filled.db.query("SELECT seq, ts, hash FROM audit")}
    out = tmp_path / "bundle.json"
    info = export(cli_run, home, out, "--since", rows[4]["ts"])
    assert (info["first_seq"], info["last_seq"]) == (4, 6)
    payload = json.loads(out.read_text())["payload"]
    assert payload["link"] == {"seq": 3, "hash": rows[3]["hash"]}
    assert verifier(out).returncode == 0
    until = export(cli_run, home, tmp_path / "until.json", "--until", rows[3]["ts"])
    assert (until["first_seq"], until["last_seq"]) == (1, 2)
    assert verifier(tmp_path / "until.json").returncode == 0


def test_export_refuses_bad_input_and_a_broken_log(filled: Box, home: Path, tmp_path: Path, cli_run: Any) -> None:
    out = tmp_path / "bundle.json"
    bad = cli_run("--home", str(home), "audit", "export", "--out", str(out), "--since", "yesterday")
    assert bad.exit_code == 2 and "ISO-8601" in bad.stderr
    empty = cli_run("--home", str(home), "audit", "export", "--out", str(out), "--since", "2999-01-01")
    assert empty.exit_code != 0 and "no audit entries" in empty.stderr
    tamper(home, "DELETE FROM audit WHERE seq = 6")
    broken = cli_run("--home", str(home), "audit", "export", "--out", str(out))
    assert broken.exit_code != 0 and "does not verify" in broken.stderr
    assert not out.exists()


# rate-limited events ------------------------------------------------------------------------


def test_record_throttled_writes_one_entry_per_window(box: Box, monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import UTC, datetime, timedelta

    from mlbox import clock

    start = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    monkeypatch.setattr(clock, "now", lambda: start)
    first = box.audit.record_throttled("mallory", "auth.denied", "models.promote", {"why": "viewer"}, every_s=60)
    assert first is not None
    assert [box.audit.record_throttled("mallory", "auth.denied", "models.promote", every_s=60) for _ in range(5)] == [
        None
    ] * 5
    # another target or actor is its own stream
    assert box.audit.record_throttled("mallory", "auth.denied", "audit.read", every_s=60) is not None
    monkeypatch.setattr(clock, "now", lambda: start + timedelta(seconds=61))
    later = box.audit.record_throttled("mallory", "auth.denied", "models.promote", every_s=60)
    assert later is not None
    entry = box.audit.entries(limit=1, target="models.promote")[0]
    assert entry.seq == later and entry.details == {"suppressed": 5}
    assert box.audit.verify().ok
