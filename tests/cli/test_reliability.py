"""The CLI's last line of defence and the reliability table's cases (issue #19; ``reliability_cases.py``)."""

import errno

import pytest
from reliability_cases import CASES, LOADS_MODEL, run_case

from workbench.cli import files
from workbench.cli import main as cli
from workbench.studies.run_train import LONG_ANSWER_CHARS


@pytest.mark.parametrize("name,setup,argv,code,words", [
    pytest.param(*case, id=case[0], marks=[pytest.mark.embedded] if case[0] in LOADS_MODEL else [])
    for case in CASES])
def test_reliability_case(request, tmp_path, name, setup, argv, code, words):
    if name in LOADS_MODEL:
        request.getfixturevalue("embedded_model")  # the cache is built first: no conversion progress on stderr
    got, err = run_case(tmp_path, setup, argv)
    assert got == code, err
    lines = [line for line in err.splitlines() if line.strip()]
    said = "warning" if code == 3 else "error"  # 3: done, but a result was skipped (figures, report)
    assert len(lines) == 1 and lines[0].startswith(f"workbench {argv[0]}: {said}: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], (word, lines[0])
    # no partial output: nothing beyond what the case set up
    assert not (tmp_path / "o").exists() and not (tmp_path / "r.json").exists()


def _fail_with(monkeypatch, exc):
    def boom(args):
        raise exc
    monkeypatch.setattr(files, "run_info", boom)


@pytest.mark.parametrize("exc,code,words", [
    (RuntimeError("kaboom"), 1, ["internal error", "RuntimeError", "kaboom", "-v"]),
    (OSError(errno.ENOSPC, "No space left on device", "/x/out.json"), 2, ["/x/out.json", "no space left"]),
    (PermissionError(errno.EACCES, "Permission denied", "/x/y"), 2, ["/x/y", "permission denied"]),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "/x/d"), 2, ["/x/d", "is a directory"]),
    (OSError("We couldn't connect to 'https://huggingface.co' to load the files"), 2, ["huggingface.co"]),
])
def test_main_turns_exceptions_into_one_line(monkeypatch, capsys, exc, code, words):
    _fail_with(monkeypatch, exc)
    assert cli.main(["info"]) == code
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("workbench info: error: ")
    assert "Traceback" not in err
    for word in words:
        assert word in err


def test_traceback_only_with_verbose(monkeypatch, capsys):
    _fail_with(monkeypatch, RuntimeError("kaboom"))
    assert cli.main(["-v", "info"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("workbench info: error: internal error")


def test_caa_warns_of_a_very_long_answer_before_the_model_loads(tmp_path, capsys):
    data = tmp_path / "long.csv"
    data.write_text("question,matching,not_matching\nq1,a,b\nq2," + "x" * (LONG_ANSWER_CHARS + 1) + ",b\n")
    # a model name that cannot load: the warning must come before it is tried
    code = cli.main(["train", "--method", "caa", "--data", str(data), "--model", "no-such-model", "--out",
                     str(tmp_path / "o")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 2, lines
    assert lines[0].startswith("workbench train: warning: 1 pair(s)") and "long.csv:3" in lines[0]
    assert "slow" in lines[0] and "no-such-model" in lines[1]


def test_library_arguments_become_flags():
    assert cli.as_flags("layers='0-99': [99] out of range") == "--layers '0-99': [99] out of range"
    assert cli.as_flags("empty question (pass allow_empty_question=True to keep it)") == \
        "empty question (pass --allow-empty-question to keep it)"
    assert cli.as_flags("holds 2 tensors; pass key= to choose one") == "holds 2 tensors; pass --key to choose one"
    assert cli.as_flags("BiPOConfig.layer=-1 is out of range") == "BiPOConfig.layer=-1 is out of range"


def test_a_library_error_reaches_the_user_with_the_flag():
    from workbench.analysis.sweep import parse_layers

    with pytest.raises(ValueError, match=r"^layers='0,99': \[99\] out of range") as info:
        parse_layers("0,99", 30)
    message, code = cli._describe_exception(info.value)
    assert code == 2 and message.startswith("--layers '0,99': [99] out of range")
