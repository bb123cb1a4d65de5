"""`tsembed.cli.main`: errors are one line (exit 2 for usage, 1 for runtime), `-v` adds the traceback."""

import pytest

from tsembed.cli import main


@pytest.mark.parametrize(("argv", "expected"), [
    (["nope"], "No such command 'nope'"),
    (["--bogus"], "No such option: --bogus"),
    (["train", "--bogus"], "No such option: --bogus"),
    (["eval", "-m", "/no/such/model", "-s", "/no/such/suite"], "'/no/such/model' does not exist"),
])
def test_usage_errors_are_one_line_with_exit_2(argv, expected, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and err.count("\n") == 1


def test_config_errors_are_one_line_with_exit_1_naming_the_key(capsys):
    assert main(["train", "--set", "optim.grad_clip=-1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "optim.grad_clip" in err and err.count("\n") == 1


def test_verbose_adds_the_traceback(capsys):
    assert main(["-v", "nope"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_help_keeps_bracketed_text(capsys):
    assert main(["serve", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # help wraps at the terminal width
    assert "[default: folder name]" in out and "TSEMBED_API_KEY environment variable" in out
