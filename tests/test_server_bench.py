"""bench/server_load.py still runs: a small load, then a kill -9 and restart under load."""

from __future__ import annotations

import subprocess
import sys

from tests.server_fixtures import REPO


def run_bench(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "bench/server_load.py", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_load_bench_loses_nothing() -> None:
    out = run_bench("--clients", "3", "--prompts", "3", "--chain", "3", "--timeout", "60")
    assert "accepted 9, refused 0, unanswered 0, completed 9, failed 0, lost 0" in out
    assert "submit latency p50" in out and "server memory: rss" in out


def test_the_load_bench_survives_a_crash() -> None:
    out = run_bench(
        "--clients", "4", "--prompts", "15", "--chain", "3", "--crash-after", "0.3",
        "--timeout", "60",
    )  # fmt: skip
    assert "server killed (SIGKILL) and restarted" in out
    assert "accepted 60, refused 0, unanswered 0, completed 60, failed 0, lost 0" in out
