"""The command line end to end: run, --set, --sweep, --report, validate, nodes; exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from nodegraph.cli import main

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "workflows" / "demo_math.json"


def write(tmp_path: Path, workflow: Any, name: str = "wf.json") -> Path:
    path = tmp_path / name
    path.write_text(workflow if isinstance(workflow, str) else json.dumps(workflow))
    return path


def test_run_prints_results_and_writes_a_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "report.json"
    assert main(["run", str(DEMO), "--out", str(tmp_path), "--report", str(report)]) == 0
    out, err = capsys.readouterr()
    assert "5: 48" in out and "6: the answer is ?" in out
    assert "[1/6]" in err and "done in" in err
    runs = json.loads(report.read_text())["runs"]
    assert len(runs) == 1 and runs[0]["status"] == "success"
    assert sorted(runs[0]["executed"]) == ["1", "2", "3", "4", "5", "6"]
    assert set(runs[0]["node_seconds"]) == set(runs[0]["executed"])
    assert runs[0]["wall_seconds"] > 0


def test_set_and_sweep_reuse_shared_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "r.json"
    code = main(
        [
            "run",
            str(DEMO),
            "--set",
            "1.value=2",
            "--sweep",
            "2.b=1,2,3",
            "--report",
            str(report),
            "--quiet",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("5:")] == ["5: 4", "5: 6", "5: 8"]
    runs = json.loads(report.read_text())["runs"]
    assert [r["values"] for r in runs] == [{"2.b": 1}, {"2.b": 2}, {"2.b": 3}]
    for later in runs[1:]:  # only the swept node's cone re-runs
        assert sorted(later["executed"]) == ["2", "3", "5"]
        assert sorted(later["cached"]) == ["1", "4", "6"]  # 4 feeds 6, which was cached


def test_two_sweeps_run_every_combination(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "r.json"
    assert (
        main(
            [
                "run",
                str(DEMO),
                "--sweep",
                "2.b=1,2",
                "--sweep",
                "2.op=add,sub",
                "--report",
                str(report),
                "--quiet",
            ]
        )
        == 0
    )
    runs = json.loads(report.read_text())["runs"]
    assert [r["text"]["5"] for r in runs] == [["13"], ["11"], ["14"], ["10"]]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--set", "9.value=1"], "no node '9'"),
        (["--set", "novalue"], "expected ID.INPUT=VALUE"),
        (["--sweep", "2.b="], "no values"),
        (["--set", '2.b="x"'], "invalid"),
    ],
)
def test_bad_arguments_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", str(DEMO), *args, "--quiet"]) == 2
    assert message in capsys.readouterr().err


def test_unreadable_and_invalid_files_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", str(tmp_path / "missing.json")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main(["run", str(write(tmp_path, "{nope"))]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    bad = {
        "1": {"class_type": "IntMath", "inputs": {"a": "x", "op": "pow"}},
        "2": {"class_type": "ShowValue", "inputs": {"value": ["1", 0]}},
    }
    assert main(["run", str(write(tmp_path, bad))]) == 2
    err = capsys.readouterr().err
    assert (
        "node 1 (IntMath), input 'a'" in err
        and "[value_not_in_list]" in err
        and "Traceback" not in err
    )


def test_node_failure_exits_1_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wf = {
        "1": {"class_type": "IntMath", "inputs": {"a": 1, "b": 0, "op": "div"}},
        "2": {"class_type": "ShowValue", "inputs": {"value": ["1", 0]}},
    }
    report = tmp_path / "r.json"
    assert main(["run", str(write(tmp_path, wf)), "--report", str(report)]) == 1
    err = capsys.readouterr().err
    assert "error in node 1 (IntMath): cannot div by zero" in err and "Traceback" not in err
    assert json.loads(report.read_text())["runs"][0]["error"]["node"] == "1"


def test_validate_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(DEMO)]) == 0
    assert "valid: 6 nodes" in capsys.readouterr().out
    bad = write(tmp_path, {"1": {"class_type": "ShowValue", "inputs": {}}})
    assert main(["validate", str(bad)]) == 2
    assert main(["validate", str(bad), "--json"]) == 2
    body = json.loads(capsys.readouterr().out)
    assert body["node_errors"]["1"]["errors"][0]["type"] == "required_input_missing"


def test_nodes_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["nodes", "--json"]) == 0
    catalogue = json.loads(capsys.readouterr().out)
    assert catalogue["IntMath"]["input_order"]["required"] == ["a", "b", "op"]
    assert main(["nodes"]) == 0
    assert "ShowValue" in capsys.readouterr().out


def test_console_script_end_to_end(tmp_path: Path) -> None:
    """The installed `nodegraph` entry point, as a user runs it."""
    exe = Path(sys.executable).parent / "nodegraph"
    done = subprocess.run(
        [str(exe), "run", str(DEMO), "--sweep", "1.value=1,2"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "5: 8" in done.stdout and "5: 16" in done.stdout
