"""conf_plugins.cli: a tool ends on a user's mistake with one line and status 1, no traceback;
anything else (a bug) keeps its traceback."""

import os
import subprocess
import sys

import pytest

from conf_plugins.cli import EXIT_STATUS, USER_ERRORS, run_main
from tests.fixtures import ROOT


def fail(error):
    raise error


@pytest.mark.parametrize(
    "error",
    [
        ValueError("bad value: pass --x"),
        FileNotFoundError("checkpoint not found: a.pth"),
        FileExistsError("out.json exists; pass --force to overwrite it"),
    ],
)
def test_user_errors_become_one_line_and_status_1(error, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_main(fail, error)
    assert exit_info.value.code == EXIT_STATUS == 1
    assert capsys.readouterr().err == f"error: {error}\n"


@pytest.mark.parametrize("error", [KeyError("k"), TypeError("t"), RuntimeError("r")])
def test_other_errors_keep_their_traceback(error):
    assert not isinstance(error, USER_ERRORS)
    with pytest.raises(type(error)):
        run_main(fail, error)


def test_the_result_and_arguments_pass_through():
    assert run_main(lambda a, b=0: a + b, 1, b=2) == 3


def test_a_tool_exits_cleanly_on_a_user_error(tmp_path):
    (tmp_path / "img" / "a_leftImg8bit.png").parent.mkdir()
    (tmp_path / "img" / "a_leftImg8bit.png").write_bytes(b"")
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "tools", "split_holdout.py"),
            str(tmp_path),
            "img",
            "--holdout",
            "5",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: --holdout must be in [1, 0] for the 1 images")
    assert "Traceback" not in result.stderr
