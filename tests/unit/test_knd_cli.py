"""``knd``'s command line: every usage error is one line and exit 2; help text with defaults."""

from __future__ import annotations

import pytest

from knd import cli
from knd.services import AUTOSCALING_FLAGS, CONFIG_FLAGS


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as ei:
        cli.main(argv)
    out, err = capsys.readouterr()
    code = ei.value.code
    return (code if isinstance(code, int) else 1), out, err


@pytest.mark.parametrize(
    ("argv", "expect"),
    [
        (["run", "--concurrency", "ten", "--name", "x", "--", "app"], "--concurrency: 'ten'"),
        (["run", "--port", "http", "--name", "x", "--", "app"], "--port: 'http'"),
        (["run", "--port", "70000", "--name", "x", "--", "app"], "--port: '70000'"),
        (["run", "--timeout", "soon", "--name", "x", "--", "app"], "--timeout: 'soon'"),
        (["run", "--progress-deadline", "-1", "--name", "x", "--", "app"], "--progress-dead"),
        (["run", "--name", "x", "--frobnicate", "--", "app"], "unknown flag(s): --frobnicate"),
        (["run", "--max-scale", "abc", "--name", "x", "--", "app"], "--max-scale: 'abc'"),
        (["run"], "one of the arguments --name --file/-f is required"),
        (["status", "--admin-port", "x"], "--admin-port: 'x'"),
        (["frob"], "invalid choice: 'frob'"),
    ],
)
def test_every_bad_flag_is_one_line_and_exit_2(
    argv: list[str], expect: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(argv, capsys)
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("knd: ") and expect in lines[0], lines[0]
    if argv[0] in ("run", "status") and "--max-scale" not in argv:
        assert f"knd {argv[0]} --help" in lines[0]  # the subcommand's help, not the top level


def test_top_level_help_has_no_markup(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    assert "``" not in out and "knd run" in out


def test_run_help_lists_every_autoscaling_flag_with_its_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(["run", "--help"], capsys)
    assert code == 0
    text = " ".join(out.split())
    for key in AUTOSCALING_FLAGS + CONFIG_FLAGS:
        assert f"--{key} V" in text, key
        assert cli.AUTOSCALING_HELP[key] in text, key
    for default in ("(60s;", "(70)", "(211;", "(200)", "(30s)", "(10)"):
        assert default in text
