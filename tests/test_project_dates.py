"""`mlbox init` dates a template's sample data so that the newest event is in the past week."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from mlbox import clock
from mlbox.project import STAMP_FORMAT, UTC_STAMP, bring_up_to_date, init_project, list_templates


def stamps(path: Path) -> list[datetime]:
    return [datetime.strptime(s, STAMP_FORMAT).replace(tzinfo=UTC) for s in UTC_STAMP.findall(path.read_text())]


def test_every_stamp_moves_by_the_same_whole_weeks(tmp_path: Path) -> None:
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("id,ts,year,note\n1,2025-01-01T00:00:00Z,2023,x\n2,2025-03-05T12:30:00Z,2024,2025-03-05\n")
    b.write_text("id,at\n1,2025-07-04T00:00:00Z\n")
    now = datetime(2026, 12, 1, 21, 0, tzinfo=UTC)
    days = bring_up_to_date([a, b], now)
    assert days % 7 == 0 and days > 0
    newest = max(stamps(a) + stamps(b))
    assert now - timedelta(weeks=1) < newest <= now
    assert stamps(a) == [datetime(2025, 1, 1, tzinfo=UTC) + timedelta(days=days),
                         datetime(2025, 3, 5, 12, 30, tzinfo=UTC) + timedelta(days=days)]  # fmt: skip
    assert newest.weekday() == datetime(2025, 7, 4).weekday()
    text = a.read_text()  # what is not a UTC timestamp stays as it was
    assert ",2023,x" in text and text.rstrip().endswith(",2024,2025-03-05")
    assert bring_up_to_date([a, b], now) == 0  # already recent: untouched


def test_init_brings_each_template_up_to_date(tmp_path: Path) -> None:
    now = clock.now()
    for template in list_templates():
        dest = tmp_path / template
        files = init_project(dest, template)
        data = [dest / f for f in files if f.startswith("data/") and f.endswith(".csv")]
        found = [t for p in data for t in stamps(p)]
        assert found, template
        assert now - timedelta(weeks=1) - timedelta(minutes=1) < max(found) <= now, template
        # a view's TTL then keeps values alive today: the newest usage row is within the template's 62-day TTL
        if template == "tabular-classification":
            usage = stamps(dest / "data" / "usage.csv")
            assert now - max(usage) < timedelta(days=62)
            assert re.search(r"ttl: 62d", (dest / "features.yaml").read_text())
