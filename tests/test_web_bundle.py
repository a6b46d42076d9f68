"""The committed web bundle (web/dist) is exactly what the sources build to.

Copies web/ (without node_modules and dist) and the workflows it imports into a temporary folder,
runs `npm ci` and `npm run build` there, and compares the output with the committed web/dist.
Needs Node and npm (and the npm registry, or a warm npm cache): skipped without them locally,
failed without them when CI=true.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
WEB = REPO / "web"


def _tree(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}


def test_committed_bundle_matches_a_fresh_build(tmp_path: Path) -> None:
    npm = shutil.which("npm")
    if not npm or not shutil.which("node"):
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("node and npm are required when CI=true")
        pytest.skip("node/npm not installed")
    work = tmp_path / "repo"
    shutil.copytree(
        WEB, work / "web", ignore=shutil.ignore_patterns("node_modules", "dist", ".vite")
    )
    if (REPO / "workflows").is_dir():
        shutil.copytree(REPO / "workflows", work / "workflows")
    env = {**os.environ, "npm_config_audit": "false", "npm_config_fund": "false"}
    for cmd in ([npm, "ci", "--no-audit", "--no-fund", "--prefer-offline"], [npm, "run", "build"]):
        res = subprocess.run(
            cmd, cwd=work / "web", env=env, capture_output=True, text=True, timeout=600
        )
        assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout}\n{res.stderr}"
    built, committed = _tree(work / "web" / "dist"), _tree(WEB / "dist")
    assert sorted(built) == sorted(committed), "web/dist lists other files: run `npm run build`"
    stale = [n for n in built if not filecmp.cmp(built[n], committed[n], shallow=False)]
    assert not stale, f"web/dist is stale ({stale}): run `cd web && npm run build` and commit"


def test_lockfile_records_only_registry_packages() -> None:
    lock = (WEB / "package-lock.json").read_text()
    assert "git+" not in lock and "file:" not in lock and "http://" not in lock
    for line in lock.splitlines():
        if '"resolved"' in line:
            assert "https://registry.npmjs.org/" in line, line
