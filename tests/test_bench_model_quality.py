"""bench/model_quality.py still runs on the shipped model (few captions, seeds and steps), and its
goal check reads issue #4's bar right."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import model_quality
from nodes.loading.folders import SHIPPED_DIR

STRENGTHS = [f"{s:.1f}" for s in model_quality.STRENGTHS]


def sweep(colour: list[float], shift: list[float], distance: list[float] | None = None) -> dict:
    distance = distance or [0.1 * (i + 1) for i in range(10)]
    return {
        s: {"distance": d, "colour_share": c, "centroid_shift": m}
        for s, d, c, m in zip(STRENGTHS, distance, colour, shift, strict=True)
    }


TXT = {
    "colour_accuracy": 0.95,
    "background_accuracy": 1.0,
    "shape_accuracy": 0.91,
    "seconds_per_image": 0.4,
}
GOOD = sweep([0, 0, 0.1, 0.4, 0.8, 0.9, 1, 1, 1, 1], [0.01] * 6 + [0.2] * 4)


def test_the_goal_check_passes_a_model_that_meets_the_bar() -> None:
    assert all(model_quality.goals_met(TXT, GOOD).values())


@pytest.mark.parametrize(
    "txt,result,missed",
    [
        ({**TXT, "shape_accuracy": 0.89}, GOOD, "txt2img"),
        ({**TXT, "seconds_per_image": 1.2}, GOOD, "under 1 s"),
        (TXT, sweep([0, 0.2, 0.2, 0.4, 0.8, 0.9, 1, 1, 1, 1], [0.01] * 10), "at 0.2"),
        (TXT, sweep([0, 0, 0.1, 0.4, 0.5, 0.6, 0.7, 0.79, 1, 1], [0.01] * 10), "at 0.8"),
        (TXT, sweep([0, 0, 0.1, 0.4, 0.8, 0.9, 1, 1, 1, 0.9], [0.01] * 10), "colour share rises"),
        (TXT, sweep([0, 0, 0.1, 0.4, 0.8, 0.9, 1, 1, 1, 1], [0.01] * 5 + [0.07] * 5), "centroid"),
        (
            TXT,
            sweep([0, 0, 0.1, 0.4, 0.8, 0.9, 1, 1, 1, 1], [0.01] * 10, [0.1] * 6 + [0.09] * 4),
            "distance rises",
        ),
    ],
)
def test_the_goal_check_names_what_is_missed(txt: dict, result: dict, missed: str) -> None:
    goals = model_quality.goals_met(txt, result)
    assert [goal for goal, met in goals.items() if not met] == [
        goal for goal in goals if missed in goal
    ]


@pytest.mark.skipif(
    not (SHIPPED_DIR / "model_index.json").is_file(), reason="the shipped model is not there yet"
)
def test_the_bench_runs_and_writes_its_report(tmp_path: Path, capsys) -> None:
    args = ["--out", str(tmp_path), "--captions", "3", "--seeds", "1", "--steps", "4", "--cfg", "5"]
    assert model_quality.main([*args, "--threads", "1"]) == 0
    report = json.loads((tmp_path / "model_quality.json").read_text())
    assert report["txt2img"]["captions"] == 3 and report["txt2img"]["cfg"] == 5.0
    assert list(report["img2img"]) == STRENGTHS
    assert all(v["outputs"] == 4 for v in report["img2img"].values())  # 4 pictures x 1 seed
    # a full re-draw moves further from the input than a touch-up
    assert report["img2img"]["1.0"]["distance"] > report["img2img"]["0.1"]["distance"]
    assert set(report["goals"]) == set(
        model_quality.goals_met(report["txt2img"], report["img2img"])
    )
    sheets = sorted(p.name for p in tmp_path.glob("sheet_*.png"))
    assert len(sheets) == 4 and (tmp_path / "img2img_strength.png").is_file()
    out = capsys.readouterr().out
    assert "txt2img over 3 captions" in out and "up to 0.6 the centroid moves" in out
