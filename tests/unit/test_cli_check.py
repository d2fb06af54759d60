"""``vnet check FILE...`` reports every file's problems, not only the first bad file's."""

from __future__ import annotations

from pathlib import Path

import pytest

from vnet.cli import main

GOOD = """\
name: good
networks: {office: {vlan: 10}}
nodes:
  c1: {kind: netns, nics: [{name: eth0, network: office, ip: 10.10.0.1/24}]}
"""
BAD_VLAN_AND_NETWORK = """\
name: bad-one
networks:
  office: {vlan: 5000}
nodes:
  c1: {kind: netns, nics: [{name: eth0, network: offce}]}
"""
BAD_NAME = """\
name: Bad_Two
networks: {office: {vlan: 10}}
nodes: {}
"""


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    paths = {"bad1": tmp_path / "bad1.yaml", "good": tmp_path / "good.yaml",
             "bad2": tmp_path / "bad2.yaml"}
    paths["bad1"].write_text(BAD_VLAN_AND_NETWORK)
    paths["good"].write_text(GOOD)
    paths["bad2"].write_text(BAD_NAME)
    return paths


def test_every_bad_file_is_reported_and_the_good_one_named(
        files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["check", str(files["bad1"]), str(files["good"]), str(files["bad2"])])
    out, err = capsys.readouterr()
    assert status == 1
    assert f"{files['bad1']}:3:" in err and "5000" in err          # both problems of bad1
    assert f"{files['bad1']}:5:" in err and "offce" in err
    assert f"{files['bad2']}:1:" in err and "Bad_Two" in err        # and bad2's, after it
    assert out == f"{files['good']}: ok\n"
    assert "2 of 3 files have errors" in err
    assert "Traceback" not in err


def test_a_missing_file_is_an_error_of_that_file_and_the_rest_are_checked(
        files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.yaml"
    status = main(["check", str(missing), str(tmp_path), str(files["bad2"]),
                   str(files["good"])])
    out, err = capsys.readouterr()
    assert status == 1
    assert f"{missing}: cannot read: No such file or directory" in err
    assert f"{tmp_path}: cannot read: Is a directory" in err
    assert f"{files['bad2']}:1:" in err
    assert out == f"{files['good']}: ok\n"
    assert "Traceback" not in err and "Errno" not in err


def test_good_files_pass(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(files["good"])]) == 0
    assert capsys.readouterr() == ("ok\n", "")
    assert main(["check", str(files["good"]), str(files["good"])]) == 0
    out, err = capsys.readouterr()
    assert out == f"{files['good']}: ok\n" * 2 and err == ""


def test_a_file_nested_too_deeply_is_an_error_not_a_traceback(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    deep = tmp_path / "deep.yaml"
    deep.write_text("name: " + "[" * 5000 + "]" * 5000 + "\n")
    assert main(["check", str(deep)]) == 1
    _out, err = capsys.readouterr()
    assert err.startswith(f"{deep}:1: nested more than 32 levels deep: vnet reads no deeper")


def test_json_lists_every_file_with_its_problems(
        files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    import json

    status = main(["check", "--json", str(files["bad1"]), str(files["good"])])
    out, err = capsys.readouterr()
    assert status == 1 and err == ""
    report = json.loads(out)
    assert report["ok"] is False
    bad, good = report["files"]
    assert bad["file"] == str(files["bad1"]) and bad["ok"] is False
    assert any(p.startswith(f"{files['bad1']}:3:") and "5000" in p for p in bad["problems"])
    assert good == {"file": str(files["good"]), "ok": True, "problems": []}
    assert main(["check", "--json", str(files["good"])]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
