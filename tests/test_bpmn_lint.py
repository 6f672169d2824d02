"""CI check of the shipped BPMN as Camunda Modeler / bpmn.io read it (tools/bpmnlint/check.js): bpmn-moddle
import with the Camunda descriptor (no warnings, no unknown elements), bpmnlint recommended rules
(tools/bpmnlint/.bpmnlintrc, every override with a reason), and complete diagram interchange."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "bpmnlint"
PACK = ROOT / "bpmn" / "iso20000"


@pytest.fixture(scope="module")
def node() -> str:
    node = shutil.which("node")
    npm = shutil.which("npm")
    assert node and npm, "Node.js and npm are needed for the BPMN lint check (tools/bpmnlint)"
    if not (TOOL / "node_modules" / "bpmnlint").is_dir():
        # the lock file pins every package; dev dependencies (bpmn-js, playwright-core) only render docs
        subprocess.run([npm, "ci", "--omit=dev", "--no-audit", "--no-fund"], cwd=TOOL, check=True,
                       capture_output=True, text=True, timeout=600)
    return node


def check(node: str, *paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run([node, str(TOOL / "check.js"), *map(str, paths)], cwd=TOOL, capture_output=True,
                          text=True, timeout=300)


def test_every_shipped_bpmn_file_imports_lints_and_has_complete_di(node):
    result = check(node)
    # the packs' BPMN and the organisations' replaced BPMN (a tailoring ships it like the pack's own)
    org_files = sorted(ROOT.glob("process_packs/**/orgs/*/bpmn/*.bpmn"))
    files = sorted(ROOT.glob("bpmn/**/*.bpmn")) + org_files
    assert files and org_files
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(files)} file(s) checked, 0 problem(s)" in result.stdout


def test_the_check_fails_on_a_lint_error(node, tmp_path):
    source = (PACK / "change_normal.bpmn").read_text(encoding="utf-8")
    # a second, unconnected start event: bpmnlint's no-disconnected and single-blank-start-event
    broken, n = re.subn(r'(<bpmn:process id="change_normal"[^>]*>)', r'\1<bpmn:startEvent id="stray_start" />',
                        source, count=1)
    assert n == 1
    copy = tmp_path / "change_normal.bpmn"
    copy.write_text(broken, encoding="utf-8")
    result = check(node, copy)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "[bpmnlint no-disconnected (error)] stray_start" in result.stdout
    assert "[bpmnlint single-blank-start-event (error)]" in result.stdout


def test_the_check_fails_when_a_shape_is_removed(node, tmp_path):
    source = (PACK / "incident.bpmn").read_text(encoding="utf-8")
    shape = re.search(r'\s*<bpmndi:BPMNShape id="[^"]*" bpmnElement="([^"]+)"[^>]*>.*?</bpmndi:BPMNShape>', source,
                      re.S)
    assert shape is not None
    copy = tmp_path / "incident.bpmn"
    copy.write_text(source.replace(shape.group(0), "", 1), encoding="utf-8")
    result = check(node, copy)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"'{shape.group(1)}': has no BPMNShape" in result.stdout
    assert "[di]" in result.stdout


def test_the_check_fails_on_unknown_content_and_import_warnings(node, tmp_path):
    source = (PACK / "problem.bpmn").read_text(encoding="utf-8")
    broken = source.replace('<bpmn:process id="problem"', '<bpmn:process camunda:candidateStarterGroupz="x" '
                            'id="problem"', 1)
    broken = re.sub(r'(<bpmn:process camunda[^>]*>)', r'\1<bpmn:extensionElements><acme:thing '
                    r'xmlns:acme="http://acme.example/x" /></bpmn:extensionElements>', broken, count=1)
    assert broken.count("acme:thing") == 1 and "Groupz" in broken
    copy = tmp_path / "problem.bpmn"
    copy.write_text(broken, encoding="utf-8")
    result = check(node, copy)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "unknown element <acme:thing>" in result.stdout
    assert "candidateStarterGroupz" in result.stdout
