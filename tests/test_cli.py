"""The `nodegraph` command as a user runs it."""

import json
import subprocess
import sys
from pathlib import Path

from nodegraph.cli import main

HELLO = Path(__file__).parent.parent / "workflows" / "hello.json"


def test_run_with_override_writes_output(tmp_path, capsys):
    assert main(["run", str(HELLO), "--output-dir", str(tmp_path), "--set", '1.value="Hi"', "-q"]) == 0
    written = tmp_path / "hello_00001_.txt"
    assert written.read_text() == "Hi, nodegraph"
    assert str(written) in capsys.readouterr().out


def test_validate_reports_errors_with_exit_code(tmp_path, capsys):
    bad = json.loads(HELLO.read_text())
    bad["nodes"]["2"]["widgets"]["delimiter"] = 5
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    assert main(["validate", str(path), "--output-dir", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert "node 2 (StringConcatenate), input 'delimiter'" in err and "invalid_input_type" in err


def test_bad_override_and_missing_file_are_readable(tmp_path, capsys):
    assert main(["run", str(HELLO), "--set", "seed=4", "--output-dir", str(tmp_path)]) == 2
    assert "expected NODE_ID.INPUT=VALUE" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "none.json"), "--output-dir", str(tmp_path)]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["run", str(HELLO), "--set", "99.value=1", "--output-dir", str(tmp_path)]) == 2
    assert "no node '99'" in capsys.readouterr().err


def test_nodes_lists_declarations(tmp_path):
    out = subprocess.run([sys.executable, "-m", "nodegraph.cli", "nodes", "--json", "--output-dir", str(tmp_path)],
                         capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    declared = {entry["type_id"]: entry for entry in json.loads(out)}
    assert declared["SaveText"]["output_node"] is True
    assert [i["name"] for i in declared["StringConcatenate"]["inputs"]] == ["string_a", "string_b", "delimiter"]
