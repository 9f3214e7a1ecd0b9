"""How long a page of the prediction log takes (`mlbox deploy log`, the TUI's predictions screen), medians of 5.

Run from a checkout: `.venv/bin/python docs/tools/prediction_log_pages.py [RECORDS] [FILES]` (default
100,000 records in 1,000 files: a day at about one request a second, flushed every second, is more
files and fewer records each). A throwaway box gets the records through the real log writer
(`PredictionLog`, one Parquet file per flush, cataloged in meta.db); 10% are canary records, 0.1%
failed. Each figure is `mlbox.monitor.logpage.page` with one DuckDB thread, against the floor of
the same query over every file of the deployment (what a reader without the catalog's pruning
would run), in the same run.
"""

import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson

from mlbox.box import Box
from mlbox.config import load_settings
from mlbox.monitor import logpage
from mlbox.monitor.logread import log_files
from mlbox.security.osuser import effective_os_user
from mlbox.serve.predlog.wire import Record
from mlbox.serve.predlog.writer import PredictionLog

ROUNDS = 5
LIMIT = 100


def fill(box: Box, records: int, files: int) -> None:
    writer = PredictionLog(box.paths.predictions, box.db, flush_seconds=3600)
    start, per = time.time() - records, records // files
    inputs = orjson.dumps([{f"x{i}": 0.5 for i in range(8)}]).decode()
    outputs = orjson.dumps([{"0": 0.3, "1": 0.7}]).decode()
    for k in range(files):
        batch = []
        for j in range(per):
            n = k * per + j
            variant = "canary" if n % 10 == 0 else "primary"
            error = "422 validation: x0 is not a number" if n % 1000 == 7 else None
            batch.append(Record(start + n, f"req-{n:08d}", "bench", f"m:{1 + (variant == 'canary')}", variant, False,
                                1.5, None, inputs, None if error else outputs, error))  # fmt: skip
        writer.extend(batch)
        writer.flush()
    writer.close()


def median_s(work: object) -> float:
    times = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        work()  # type: ignore[operator]
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def floor(box: Box, before: str | None, **narrow: object) -> None:
    """The same page with every file read: no window from the catalog."""
    cursor = logpage.Cursor.parse(before) if before else None
    files = log_files(box.db, box.paths.home, "bench", None, None)
    logpage.read(files, "bench", None, cursor, narrow.get("variant"), bool(narrow.get("errors")), LIMIT + 1)  # type: ignore[arg-type]


def main() -> None:
    records = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    files = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000
    home = Path(tempfile.mkdtemp()) / "box"
    box = Box.create(load_settings(home), effective_os_user())
    try:
        started = time.perf_counter()
        fill(box, records, files)
        print(f"{records:,} records in {files:,} files written in {time.perf_counter() - started:.1f} s")
        middle = logpage.Cursor(int((time.time() - records / 2) * 1e6), "", "", "").text()
        cases = [("newest page", None, {}), ("a page halfway down", middle, {}),
                 ("canary only (10%)", None, {"variant": "canary"}), ("failed only (0.1%)", None, {"errors": True})]  # fmt: skip
        print(f"{'page of ' + str(LIMIT):<24} {'pruned':>9} {'files':>6} {'all files':>10} {'ratio':>6}")
        for name, before, narrow in cases:
            got = logpage.page(box.db, box.paths.home, "bench", limit=LIMIT, before=before, **narrow)  # type: ignore[arg-type]
            pruned = median_s(lambda: logpage.page(box.db, box.paths.home, "bench", limit=LIMIT, before=before, **narrow))  # type: ignore[arg-type]  # noqa: B023
            full = median_s(lambda: floor(box, before, **narrow))  # noqa: B023
            print(f"{name:<24} {pruned * 1000:>7.1f}ms {got.files:>6} {full * 1000:>8.1f}ms {full / pruned:>5.1f}x")
    finally:
        box.close()
        shutil.rmtree(home.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
