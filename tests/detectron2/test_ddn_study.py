"""tools/ddn_study.py's choice rule (on the held-out split) and its knob options; the study
itself trains a dozen students (minutes each) and runs from the README, not here."""

import pytest

from tests.fixtures import load_tool

study = load_tool("ddn_study")


def row(name, ap, msce, mce, val_msce=0.5):
    split = {"AP": ap, "MSCE@IoU0.5": msce, "MCE@IoU0.5": mce}
    return {"name": name, "knobs": {"k": name}, "calib": split, "val": {**split, "MSCE@IoU0.5": val_msce}}


BASE = row("baseline", 50.0, 0.10, 0.30)


def test_choice_takes_the_lowest_calib_msce_within_one_map_and_no_worse_mce():
    rows = [
        row("a", 49.5, 0.05, 0.29, val_msce=0.9),  # qualifies: best on calib wins
        row("b", 48.0, 0.01, 0.10),  # loses 2 mAP
        row("c", 50.0, 0.02, 0.40, val_msce=0.0),
    ]  # worse MCE (val never decides)
    best, why = study.choose(rows, BASE)
    assert best["name"] == "a" and why == "mAP and MCE constraints met"


def test_choice_says_when_no_variant_keeps_mce():
    best, why = study.choose([row("c", 50.0, 0.02, 0.40), row("d", 49.9, 0.03, 0.35)], BASE)
    assert best["name"] == "c" and "no variant keeps MCE" in why
    best, why = study.choose([row("b", 40.0, 0.01, 0.10)], BASE)
    assert best["name"] == "b" and "no variant within 1 mAP" in why


@pytest.mark.parametrize(
    "knobs, expected",
    [
        ({"MAX_ITER": 400}, ["SOLVER.MAX_ITER", "400", "SOLVER.STEPS", "(300,)"]),
        (
            {"DISTILL_WEIGHT": 2.0, "MATCH_IOU": 0.3},
            ["MODEL.DDN.DISTILL_WEIGHT", "2.0", "MODEL.DDN.MATCH_IOU", "0.3"],
        ),
    ],
)
def test_knob_options_are_config_overrides(knobs, expected):
    assert study.knob_options(knobs) == expected


def test_missing_teacher_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="teacher checkpoint not found"):
        study.main(["--teacher", str(tmp_path / "none.pth"), "--output", str(tmp_path)])


def test_markdown_table_marks_the_choice_and_reports_val_msce_change(tmp_path):
    rows = [row("a", 49.5, 0.05, 0.29, val_msce=0.25)]
    summary = {
        "baseline": {
            **BASE,
            "val": {**BASE["val"], "ECE@IoU0.5": 0.1, "D-ECE@IoU0.5": 0.2, "LaECE@IoU0.5": 0.3},
        },
        "variants": [
            {
                **rows[0],
                "val": {**rows[0]["val"], "ECE@IoU0.5": 0.1, "D-ECE@IoU0.5": 0.2, "LaECE@IoU0.5": 0.3},
            }
        ],
        "chosen": "a",
        "chosen_knobs": {"k": "a"},
        "rule": "mAP and MCE constraints met",
    }
    study.write_markdown(summary, tmp_path / "study.md")
    text = (tmp_path / "study.md").read_text()
    assert "| a **(chosen)** | 49.50 | 0.0500 |" in text and "-50.0 %" in text
