"""How long `mlbox tui` takes from process start to Pulse drawn, in a real terminal (tmux), median of 5.

Run from a checkout: `.venv/bin/python docs/tools/tui_first_paint.py`. It makes a throwaway box
(`mlbox init`, the quickstart's template, nothing trained: what is measured is the app's start, not
the box's size), starts `mlbox tui` in a private 80×24 tmux server, and polls `capture-pane` every
10 ms until Pulse's panels are drawn (`jobs and GPUs` on screen). The figure includes Python's own
start, mlbox's imports, Textual's and the first load of the box. Needs tmux.
"""

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROUNDS = 5


def first_paint(home: Path, tmux: str) -> float:
    name = f"paint-{time.monotonic_ns()}"
    mlbox = Path(sys.executable).with_name("mlbox")
    env = f"env -i HOME={home.parent} MLBOX_HOME={home} MLBOX_SERVE_PORT=9 TERM=xterm-256color LANG=C.UTF-8"
    started = time.perf_counter()
    subprocess.run([tmux, "-L", name, "new-session", "-d", "-s", name, "-x", "80", "-y", "24", f"{env} {mlbox} tui"], check=True)
    try:
        while True:
            shown = subprocess.run([tmux, "-L", name, "capture-pane", "-t", name, "-p"], capture_output=True, text=True).stdout
            if "jobs and GPUs" in shown and "deployments" in shown:
                return time.perf_counter() - started
            if time.perf_counter() - started > 30:
                raise SystemExit(f"no Pulse after 30 s:\n{shown}")
            time.sleep(0.01)
    finally:
        subprocess.run([tmux, "-L", name, "kill-server"], capture_output=True)


def main() -> None:
    tmux = shutil.which("tmux")
    if tmux is None:
        raise SystemExit("needs tmux")
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "box"
        subprocess.run([str(Path(sys.executable).with_name("mlbox")), "init", str(home)], check=True, capture_output=True)
        first_paint(home, tmux)  # warm the page cache, as a second start after boot is
        times = [first_paint(home, tmux) for _ in range(ROUNDS)]
    print(f"mlbox tui first paint: median {statistics.median(times) * 1000:.0f} ms "
          f"(min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f}, {ROUNDS} rounds)")


if __name__ == "__main__":
    main()
