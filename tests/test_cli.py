"""The command line: validate (file:line:column, exit codes) and deploy (same bytes, same version)."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from itsmflow.cli import app

from .conftest import FIXTURES

runner = CliRunner()

HOSTILE_XXE = """<?xml version="1.0"?>
<!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL" id="d" targetNamespace="x">
  <bpmn:process id="p" name="&xxe;" isExecutable="true"/>
</bpmn:definitions>
"""

HOSTILE_CONDITION = """<?xml version="1.0"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL" id="d" targetNamespace="x">
  <bpmn:process id="p" isExecutable="true">
    <bpmn:startEvent id="s"/>
    <bpmn:sequenceFlow id="f" sourceRef="s" targetRef="g"/>
    <bpmn:exclusiveGateway id="g" default="f3"/>
    <bpmn:sequenceFlow id="f2" sourceRef="g" targetRef="e">
      <bpmn:conditionExpression>().__class__.__base__.__subclasses__()</bpmn:conditionExpression>
    </bpmn:sequenceFlow>
    <bpmn:sequenceFlow id="f3" sourceRef="g" targetRef="e"/>
    <bpmn:endEvent id="e"/>
  </bpmn:process>
</bpmn:definitions>
"""


def test_validate_ok_and_errors_with_line_and_column(tmp_path):
    ok = runner.invoke(app, ["validate", str(FIXTURES / "ten_steps.bpmn")])
    assert ok.exit_code == 0, ok.output
    assert "ten_steps" in ok.output
    (tmp_path / "xxe.bpmn").write_text(HOSTILE_XXE)
    (tmp_path / "cond.bpmn").write_text(HOSTILE_CONDITION)
    bad = runner.invoke(app, ["validate", str(tmp_path)])
    assert bad.exit_code == 1
    lines = [line for line in bad.output.splitlines() if line.strip()]
    assert any(re.match(r"xxe\.bpmn:2:\d+: .*DOCTYPE", line) for line in lines), bad.output
    assert any(re.match(r"cond\.bpmn:7:\d+: .*refused", line) for line in lines), bad.output
    assert "root:" not in bad.output  # nothing of /etc/passwd leaks


def test_deploy_same_file_twice_keeps_the_version(tmp_path):
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    first = runner.invoke(app, ["deploy", str(FIXTURES / "ten_steps.bpmn"), "--db", db])
    assert first.exit_code == 0, first.output
    assert "ten_steps version 1" in first.output
    again = runner.invoke(app, ["deploy", str(FIXTURES / "ten_steps.bpmn"), "--db", db])
    assert again.exit_code == 0 and "ten_steps version 1" in again.output and "unchanged" in again.output
    changed = tmp_path / "ten_steps.bpmn"
    changed.write_bytes((FIXTURES / "ten_steps.bpmn").read_bytes().replace(b"Closed", b"Done"))
    third = runner.invoke(app, ["deploy", str(changed), "--db", db])
    assert third.exit_code == 0 and "ten_steps version 2" in third.output
    missing = runner.invoke(app, ["deploy", str(tmp_path / "nope.bpmn"), "--db", db])
    assert missing.exit_code != 0
