"""Parsing and validation of an uploaded deployment (BPMN 2.0 + DMN files) into SpiffWorkflow specs.

Pipeline (:func:`parse_deployment`):

1. every file: size cap, DOCTYPE/entity refusal, hardened lxml parse (:mod:`.xml`), document kind
   (BPMN or DMN, from the root element) and XSD validation (:mod:`.xsd`). Problems from all files
   are collected; if there is any, the deployment is refused here (later stages would only report
   follow-on noise).
2. indexing: process ids (duplicates across files are refused), decisions, collaborations, and a
   first :class:`CamundaParser` pass over every tree (document-level problems are collected).
3. per executable process: our own structural checks (dangling sequence flows, gateway conditions -
   all reported, not just the first), ``script_validator`` over every run-time expression, then a
   SpiffWorkflow spec build in a fresh parser (so a failure in one process can never leave a
   half-built spec behind for another). SpiffWorkflow's ``ValidationException`` is mapped to
   ``file:line:column`` through the element id it carries.

SpiffWorkflow only ever sees trees we parsed ourselves (``add_bpmn_xml`` / ``add_dmn_xml``); it never
opens a file.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any, Callable, Iterable

from lxml import etree
from SpiffWorkflow.bpmn.parser.event_parsers import ReceiveTaskParser, SendTaskParser
from SpiffWorkflow.bpmn.parser.ProcessParser import ProcessParser
from SpiffWorkflow.bpmn.parser.util import full_tag
from SpiffWorkflow.bpmn.parser.ValidationException import ValidationException
from SpiffWorkflow.bpmn.serializer import BpmnWorkflowSerializer
from SpiffWorkflow.bpmn.serializer.default.task_spec import BpmnTaskSpecConverter
from SpiffWorkflow.bpmn.serializer.workflow import VERSION as SPIFF_SERIALIZER_VERSION
from SpiffWorkflow.bpmn.specs.defaults import ReceiveTask, ScriptTask, SendTask, ServiceTask
from SpiffWorkflow.camunda.parser.CamundaParser import CamundaParser
from SpiffWorkflow.camunda.parser.event_parsers import CamundaEventDefinitionParser
from SpiffWorkflow.camunda.parser.task_spec import BusinessRuleTaskParser, CamundaTaskParser
from SpiffWorkflow.camunda.parser.task_spec import ScriptTaskParser as CamundaScriptTaskParser
from SpiffWorkflow.camunda.serializer.config import CAMUNDA_CONFIG
from SpiffWorkflow.camunda.specs.business_rule_task import BusinessRuleTask
from SpiffWorkflow.dmn.parser.DMNParser import DMNParser

from itsmflow.engine.errors import DeploymentInvalid, SourceIssue

from . import camunda as dialect
from . import metadata as md
from .model import (
    CollaborationModel,
    DecisionModel,
    ParsedDeployment,
    ProcessModel,
)
from .xml import DEFAULT_MAX_BYTES, XmlDocument, parse_document
from .xsd import document_kind, validate_document

__all__ = [
    "parse_deployment",
    "SERIALIZER_CONFIG",
    "spec_to_json",
    "spec_from_json",
    "ScriptValidator",
    "SPEC_FORMAT",
]

ScriptValidator = Callable[[str], None]

MAX_FILES = 100

# --------------------------------------------------------------------------------------------------
# SpiffWorkflow parser, hardened and made tolerant of non-executable content
# --------------------------------------------------------------------------------------------------


class _ProcessParser(ProcessParser):
    """``isExecutable`` missing means *not* executable (SpiffWorkflow defaults it to true)."""

    def __init__(self, p, node, nsmap, data_stores, filename=None, lane=None):
        super().__init__(p, node, nsmap, data_stores, filename=filename, lane=lane)
        if md.is_bpmn(node, "process"):
            self.process_executable = md.is_executable_flag(node)


class _BusinessRuleTaskParser(BusinessRuleTaskParser):
    def create_task(self):
        decision_ref = self.node.get("{%s}decisionRef" % md.CAMUNDA_NS)
        if not decision_ref:
            raise ValidationException(
                "businessRuleTask needs a camunda:decisionRef naming a DMN decision of the deployment",
                node=self.node, file_name=self.filename,
            )
        try:
            return super().create_task()
        except ValidationException as exc:
            exc.file_name = exc.file_name or self.filename
            raise


class _MessagePayloadMixin:
    """SpiffWorkflow's Camunda message events *evaluate* ``camunda:expression`` as the payload when
    thrown, and crash when there is none (``eval(None)``): default it to the expression ``None``."""

    def parse_message_event(self, message_event):
        event_definition = super().parse_message_event(message_event)
        if getattr(event_definition, "expression", "") is None:
            event_definition.expression = "None"
        return event_definition


def _with_payload_default(cls):
    return type(f"_{cls.__name__}", (_MessagePayloadMixin, cls), {})


class _SendTaskParser(_MessagePayloadMixin, CamundaEventDefinitionParser, SendTaskParser):
    """SpiffWorkflow's Camunda parser keeps the plain BPMN send/receive task parsers, which create
    plain BPMN message definitions its Camunda serializer cannot store; use the Camunda ones."""


class _ReceiveTaskParser(_MessagePayloadMixin, CamundaEventDefinitionParser, ReceiveTaskParser):
    pass


class _ScriptTaskParser(CamundaScriptTaskParser, CamundaTaskParser):
    """Camunda's script task parser skips the Camunda multi-instance handling (camunda:collection /
    elementVariable) and camunda:properties; combine both."""


def _with_io(cls):
    """Camunda ``camunda:inputOutput`` support (:mod:`.camunda`) for a task parser class."""
    return type(f"_Io{cls.__name__}", (dialect.IoParserMixin, cls), {})


class _DeploymentParser(CamundaParser):
    PROCESS_PARSER_CLASS = _ProcessParser
    OVERRIDE_PARSER_CLASSES = {
        **CamundaParser.OVERRIDE_PARSER_CLASSES,
        **{
            full_tag(tag): (_with_io(CamundaParser.OVERRIDE_PARSER_CLASSES[full_tag(tag)][0]),
                            CamundaParser.OVERRIDE_PARSER_CLASSES[full_tag(tag)][1])
            for tag in ("userTask", "manualTask", "task")
        },
        full_tag("businessRuleTask"): (_BusinessRuleTaskParser, BusinessRuleTask),
        full_tag("scriptTask"): (_with_io(_ScriptTaskParser), ScriptTask),
        full_tag("sendTask"): (_SendTaskParser, SendTask),
        full_tag("receiveTask"): (_ReceiveTaskParser, ReceiveTask),
        # a service task is left STARTED by SpiffWorkflow (nothing runs it): the engine completes it
        full_tag("serviceTask"): (_with_io(CamundaTaskParser), ServiceTask),
        **{
            full_tag(tag): (_with_payload_default(parser_cls), spec_cls)
            for tag, (parser_cls, spec_cls) in (
                (t, CamundaParser.OVERRIDE_PARSER_CLASSES[full_tag(t)])
                for t in ("startEvent", "endEvent", "intermediateCatchEvent", "intermediateThrowEvent", "boundaryEvent")
            )
        },
    }

    def __init__(self) -> None:
        super().__init__(validator=None)  # we validate ourselves, without mutating the tree
        self.doc_errors: list[tuple[str | None, Exception]] = []
        self.unimplemented_data_stores: dict[str, str | None] = {}

    def add_bpmn_xml(self, bpmn, filename=None):
        steps = [
            self._add_data_stores,
            self._add_diagram_indexes,
            lambda b: self._add_processes(b, filename),
            self._add_collaborations,
            self._add_messages,
            self._add_signals,
            self._add_errors,
            self._add_escalations,
            self._add_correlations,
        ]
        for step in steps:
            try:
                step(bpmn)
            except Exception as exc:  # collected, reported with a location by the caller
                if isinstance(exc, ValidationException) and not exc.file_name:
                    exc.file_name = filename
                self.doc_errors.append((filename, exc))

    def add_dmn_xml(self, node, filename=None):
        # SpiffWorkflow maps the *default* namespace to "dmn"; DMN files using a prefix for the DMN
        # namespace would break its xpaths, so map "dmn" to the root element's namespace instead.
        namespaces = self.namespaces.copy()
        namespaces.update({k: v for k, v in node.nsmap.items() if k})
        namespaces["dmn"] = etree.QName(node).namespace
        dmn_parser = DMNParser(self, node, namespaces, filename=filename)
        self.dmn_parsers[dmn_parser.bpmn_id] = dmn_parser
        self.dmn_parsers_by_name[dmn_parser.get_name()] = dmn_parser

    def _add_processes(self, bpmn, filename=None):
        for process in bpmn.xpath(".//bpmn:process", namespaces=self.namespaces):
            try:
                self._find_dependencies(process)
                self.create_parser(process, filename)
            except Exception as exc:
                if isinstance(exc, ValidationException) and not exc.file_name:
                    exc.file_name = filename
                self.doc_errors.append((filename, exc))

    def _add_data_stores(self, bpmn):
        # Data stores without an implementation (the MIWG files are full of them) must not make a
        # whole document unparseable; a process that *uses* one fails when its spec is built.
        for data_store in bpmn.xpath(".//bpmn:dataStore", namespaces=self.namespaces):
            ds_id, ds_name = data_store.get("id"), data_store.get("name")
            if ds_id is None or ds_name not in self.DATA_STORE_CLASSES:
                self.unimplemented_data_stores[ds_id or "?"] = ds_name
                continue
            self.data_stores[ds_id] = self.DATA_STORE_CLASSES[ds_name](
                ds_id, ds_name, data_store.get("capacity"), data_store.get("isUnlimited")
            )

    def _find_dependencies(self, process):
        for call_activity in process.xpath(".//bpmn:callActivity", namespaces=self.namespaces):
            self.process_dependencies.add(call_activity.get("calledElement"))
        for business_rule in process.xpath(".//bpmn:businessRuleTask", namespaces=self.namespaces):
            ref = business_rule.get("{%s}decisionRef" % md.CAMUNDA_NS)
            if ref:
                self.dmn_dependencies.add(ref)


# --------------------------------------------------------------------------------------------------
# exceptions -> located issues
# --------------------------------------------------------------------------------------------------

_ELEMENT_REPR = re.compile(r"<Element \{[^}]*\}(\w+) at 0x[0-9a-fA-F]+>")
_NOT_FOUND = re.compile(r"The process '([^']*)' was not found")
_NOT_EXECUTABLE = re.compile(r"Process (.+) is not executable$")


def _exc_message(exc: BaseException) -> str:
    if isinstance(exc, ValidationException):
        msg = str(exc.args[0]) if exc.args else "invalid"
    elif isinstance(exc, KeyError):
        msg = f"missing {exc.args[0]!r}" if exc.args else "KeyError"
    else:
        msg = f"{type(exc).__name__}: {exc}"
    msg = _ELEMENT_REPR.sub(r"<\1>", msg)
    return re.sub(r"\s+", " ", msg).strip().rstrip(".").strip() or type(exc).__name__


class _Locator:
    def __init__(self, docs: dict[str, XmlDocument]) -> None:
        self.docs = docs

    def find_id(self, element_id: str | None, prefer: XmlDocument | None) -> tuple[XmlDocument | None, Any]:
        if not element_id:
            return None, None
        order = ([prefer] if prefer is not None else []) + [d for d in self.docs.values() if d is not prefer]
        for d in order:
            el = d.by_id(element_id)
            if el is not None:
                return d, el
        return None, None

    def from_exception(
        self,
        exc: BaseException,
        default_doc: XmlDocument,
        default_el: Any,
        scope: Any = None,
        hint: str | None = None,
    ) -> SourceIssue:
        doc, el = None, None
        file_name = getattr(exc, "file_name", None) or None
        prefer = self.docs.get(file_name) if file_name else default_doc
        element_id = getattr(exc, "id", None) if isinstance(exc, ValidationException) else None
        if element_id:
            doc, el = self.find_id(element_id, prefer)
        msg = _exc_message(exc)
        if el is None:
            m = _NOT_FOUND.search(msg)
            if m:
                doc, el = self._find_call_activity(m.group(1), scope, default_doc)
                msg = f"called process '{m.group(1)}' is not defined in this deployment"
        m = _NOT_EXECUTABLE.match(msg)
        if m and scope is not None and scope.get("id") != m.group(1):
            cdoc, ca = self._find_call_activity(m.group(1), scope, default_doc)
            if ca is not None:
                doc, el = cdoc, ca
                msg = f"called process '{m.group(1)}' is not executable (isExecutable is not \"true\")"
        line_number = getattr(exc, "line_number", None)
        if el is None and isinstance(line_number, int) and line_number > 0:
            d = prefer or default_doc
            el = next((e for e in d.tree.iter() if isinstance(e.tag, str) and e.sourceline == line_number), None)
            doc = d if el is not None else None
        if el is None:
            doc, el = (prefer or default_doc), default_el
        if msg.startswith("Cannot resolve data") and el is not None:
            msg = self._data_association_message(msg, el, hint)
        if el is not None and el.get("id") and md.local(el) and f"'{el.get('id')}'" not in msg:
            msg = f"{md.local(el)} '{el.get('id')}': {msg}"
        return doc.issue(el, msg)

    def _data_association_message(self, msg: str, el: Any, hint: str | None) -> str:
        inbound = "dataInputAssociation" in msg
        path = "./bpmn:dataInputAssociation/bpmn:sourceRef" if inbound else "./bpmn:dataOutputAssociation/bpmn:targetRef"
        refs = []
        for r in el.xpath(path, namespaces=md.NS):
            ref = (r.text or "").strip()
            _, target = self.find_id(ref, None)
            if target is None or not md.is_bpmn(target, "dataObjectReference", "dataStoreReference") \
                    or md.is_bpmn(target, "dataStoreReference"):
                refs.append(ref)
        what = "source" if inbound else "target"
        out = f"cannot resolve {'dataInputAssociation' if inbound else 'dataOutputAssociation'} {what}"
        out += (" " + ", ".join(repr(r) for r in refs)) if refs else ""
        out += ": only data object references and data stores implemented by the engine are supported"
        if hint:
            out += f" ({hint})"
        return out

    def _find_call_activity(self, called: str, scope: Any, default_doc: XmlDocument):
        search = []
        if scope is not None:
            search.append((default_doc, scope))
        search += [(d, d.root) for d in self.docs.values()]
        for d, root in search:
            for ca in root.iter(md.q("callActivity")):
                if ca.get("calledElement") == called:
                    return d, ca
        return None, None


def _dedupe(issues: Iterable[SourceIssue]) -> list[SourceIssue]:
    seen, out = set(), []
    for i in issues:
        key = (i.file, i.line, i.column, i.message)
        if key not in seen:
            seen.add(key)
            out.append(i)
    return out


# --------------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------------


def parse_deployment(
    files: list[tuple[str, bytes]],
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    script_validator: ScriptValidator | None = None,
    strict: bool = True,
) -> ParsedDeployment:
    """Parse and validate the files of one deployment.

    :param files: ``(file name, original bytes)``; names must be unique. BPMN vs DMN is decided by
        the root element, not the extension.
    :param max_bytes: per-file size cap, checked before parsing.
    :param script_validator: called with every expression/script the engine will evaluate in an
        executable process (conditions, scripts, non-literal timer expressions, message payload and
        correlation expressions, multi-instance / loop / conditional-event / ad-hoc conditions, DMN
        input expressions and output entries); it must raise to refuse one.
    :param strict: when True (default) a process declared ``isExecutable="true"`` that cannot be
        built refuses the whole deployment. When False (interchange import, e.g. the MIWG suite) such
        a process is imported as *not executable*, its problems become ``warnings`` and the reason
        is recorded in ``non_executable_reasons``. Syntax, safety and schema errors always refuse.
    :raises DeploymentInvalid: with every problem found, each located ``file:line:column``.
    """
    issues: list[SourceIssue] = []
    warnings: list[SourceIssue] = []

    # ---- stage 1: safe XML + schema ------------------------------------------------------------
    if not files:
        raise DeploymentInvalid([SourceIssue("<deployment>", None, None, "the deployment contains no files")])
    if len(files) > MAX_FILES:
        raise DeploymentInvalid([SourceIssue("<deployment>", None, None, f"too many files ({len(files)} > {MAX_FILES})")])

    originals: dict[str, bytes] = {}
    docs: dict[str, XmlDocument] = {}
    kinds: dict[str, str] = {}
    for name, data in files:
        if not isinstance(name, str) or not name:
            issues.append(SourceIssue(str(name), None, None, "file name must be a non-empty string"))
            continue
        if name in originals:
            issues.append(SourceIssue(name, None, None, "duplicate file name in deployment"))
            continue
        originals[name] = bytes(data) if isinstance(data, (bytearray, memoryview)) else data
        doc, problems = parse_document(name, data, max_bytes=max_bytes)
        if problems or doc is None:
            issues.extend(problems)
            continue
        kind = document_kind(doc.root)
        if kind is None:
            issues.append(doc.issue(
                doc.root,
                f"not a BPMN 2.0 or DMN document (root element is {doc.short_names(str(doc.root.tag))!r}, "
                f"expected definitions in namespace http://www.omg.org/spec/BPMN/20100524/MODEL or a DMN namespace)",
            ))
            continue
        schema_issues = validate_document(doc, kind)
        if schema_issues:
            issues.extend(schema_issues)
            continue
        docs[name], kinds[name] = doc, kind
    if issues:
        raise DeploymentInvalid(_dedupe(issues))

    locator = _Locator(docs)
    bpmn_docs = [d for n, d in docs.items() if kinds[n] == "bpmn"]
    dmn_docs = [d for n, d in docs.items() if kinds[n] == "dmn"]
    index = md.DocumentIndex(bpmn_docs)

    # ---- stage 2: index processes and decisions -----------------------------------------------
    file_processes: dict[str, list[str]] = {n: [] for n in originals}
    process_elements: dict[str, tuple[XmlDocument, Any]] = {}
    for doc in bpmn_docs:
        for proc in doc.root.findall(md.q("process")):
            pid = proc.get("id")
            if pid is None:
                issues.append(doc.issue(proc, "process has no id"))
                continue
            if pid in process_elements:
                other = process_elements[pid][0]
                issues.append(doc.issue(proc, f"duplicate process id '{pid}' (also defined in {other.name})"))
                continue
            process_elements[pid] = (doc, proc)
            file_processes[doc.name].append(pid)

    decisions: dict[str, DecisionModel] = {}
    dmn_with_decision: set[str] = set()
    for doc in dmn_docs:
        ns = etree.QName(doc.root).namespace
        found = doc.root.findall("{%s}decision" % ns)
        problems = []
        if not found:
            warnings.append(doc.issue(doc.root, "DMN file defines no decision"))
            continue
        for dec in found[1:]:
            problems.append(doc.issue(dec, f"decision '{dec.get('id')}': only one decision per DMN file is supported"))
        dec, did = found[0], found[0].get("id")
        tables = dec.findall("{%s}decisionTable" % ns)
        if len(tables) != 1:
            problems.append(doc.issue(dec, f"decision '{did}': exactly one decisionTable is supported, found {len(tables)}"))
        if did in decisions:
            issues.append(doc.issue(dec, f"duplicate decision id '{did}' (also defined in {decisions[did].file})"))
            continue
        if problems:
            (issues if strict else warnings).extend(problems)
            continue
        decisions[did] = DecisionModel(id=did, name=dec.get("name"), file=doc.name)
        dmn_with_decision.add(doc.name)
    if issues:
        raise DeploymentInvalid(_dedupe(issues))

    declared_exec = {pid for pid, (_, el) in process_elements.items() if md.is_executable_flag(el)}

    # Camunda 7 dialect (JUEL, unquoted ISO timers, camunda:inputOutput): SpiffWorkflow gets an
    # execution copy of each tree with the translated expressions; problems are located on the original
    dialects = {d.name: dialect.normalise(d.tree) for d in bpmn_docs}

    def new_parser() -> _DeploymentParser:
        p = _DeploymentParser()
        for d in bpmn_docs:
            p.add_bpmn_xml(dialects[d.name].tree, filename=d.name)
        for d in dmn_docs:
            if d.name not in dmn_with_decision:
                continue
            try:
                p.add_dmn_xml(d.root, filename=d.name)
            except Exception as exc:
                p.doc_errors.append((d.name, exc))
        return p

    # problems that make a process impossible to execute: process id -> issues
    blocking: dict[str, list[SourceIssue]] = {}

    def block(pids: Iterable[str], problem: SourceIssue) -> None:
        for pid in pids:
            blocking.setdefault(pid, []).append(problem)

    # document-level problems from SpiffWorkflow's first pass
    try:
        index_parser = new_parser()
    except Exception as exc:  # pragma: no cover - add_* are guarded step by step
        raise DeploymentInvalid([SourceIssue("<deployment>", None, None, f"cannot index deployment: {_exc_message(exc)}")])
    ds_hint = None
    if index_parser.unimplemented_data_stores:
        names = ", ".join(repr(v or k) for k, v in index_parser.unimplemented_data_stores.items())
        ds_hint = f"data stores have no implementation in this engine: {names}"
    for filename, exc in index_parser.doc_errors:
        doc = docs.get(filename) or bpmn_docs[0]
        problem = locator.from_exception(exc, doc, doc.root)
        affected = [pid for pid in file_processes.get(doc.name, []) if pid in declared_exec]
        if affected:
            block(affected, problem)
        else:
            warnings.append(problem)

    # DMN: parse every decision now (SpiffWorkflow would only do it when a task needs it)
    for did, dmn_parser in list(index_parser.dmn_parsers.items()):
        try:
            dmn_parser.parse()
        except Exception as exc:
            doc = docs[dmn_parser.filename]
            problem = locator.from_exception(exc, doc, doc.by_id(did) or doc.root)
            users = [pid for pid in declared_exec if _uses_decision(process_elements[pid][1], did)]
            if strict:
                issues.append(problem)
            elif users:
                block(users, problem)
            else:
                warnings.append(problem)

    # expressions in DMN files and correlation properties
    if script_validator is not None:
        for doc in dmn_docs:
            for el, what, expr in md.iter_dmn_expressions(doc.root):
                problem = _check_expression(script_validator, doc, el, what, expr)
                if problem is None:
                    continue
                users = [pid for pid in declared_exec if _uses_any_decision(process_elements[pid][1], doc)]
                if strict:
                    issues.append(problem)
                elif users:
                    block(users, problem)
                else:
                    warnings.append(problem)
        for doc in bpmn_docs:
            affected = [pid for pid in file_processes.get(doc.name, []) if pid in declared_exec]
            if not affected:
                continue
            for el, what, expr in md.iter_correlation_expressions(doc.root):
                problem = _check_expression(script_validator, doc, el, what, expr)
                if problem:
                    block(affected, problem)

    # ---- stage 3: each executable process -------------------------------------------------------
    dialect_problems: dict[str, list[SourceIssue]] = {}
    specs: dict[str, Any] = {}
    subprocess_specs: dict[str, dict[str, Any]] = {}
    to_build: list[str] = []
    for pid, (doc, proc) in process_elements.items():
        if pid not in declared_exec:
            continue
        structural = md.check_structure(doc, proc)
        ddoc = dialects[doc.name]
        # reported after the spec build's problems (those say more about what the engine cannot run)
        dialect_problems[pid] = [doc.issue(el, msg) for el, msg in ddoc.problems if _inside(el, proc)]
        for problem in structural:
            block([pid], problem)
        if script_validator is not None:
            copy_proc = ddoc.translated(proc)
            expressions = list(md.iter_process_expressions(copy_proc))
            for node in copy_proc.iter():
                expressions.extend(dialect.iter_io_expressions(node) if md.is_bpmn(node) else ())
            for el, what, expr in expressions:
                if el in ddoc.failed:
                    continue  # its JUEL was refused above
                problem = _check_expression(script_validator, doc, ddoc.original.get(el, el), what, expr)
                if problem:
                    block([pid], problem)
        if not structural:  # else SpiffWorkflow would only re-report the first of them
            to_build.append(pid)

    # Fast path: one parser for everything. SpiffWorkflow leaves a half-built spec behind when it
    # fails (and hands it out on the next request without complaint), so as soon as anything fails
    # we start over with a fresh parser per process.
    built: dict[str, tuple[Any, dict]] | None = {}
    shared = new_parser()
    for pid in to_build:
        try:
            built[pid] = (shared.get_spec(pid), shared.get_subprocess_specs(pid))
        except Exception:
            built = None
            break
    for pid in to_build:
        doc, proc = process_elements[pid]
        if built is not None:
            spec, subs = built[pid]
        else:
            try:
                parser = new_parser()
                spec = parser.get_spec(pid)
                subs = parser.get_subprocess_specs(pid)
            except Exception as exc:
                block([pid], locator.from_exception(exc, doc, proc, scope=proc, hint=ds_hint))
                continue
        problem = _check_persistable(doc, proc, spec, subs, locator)
        if problem is not None:
            block([pid], problem)
            continue
        specs[pid], subprocess_specs[pid] = spec, subs

    for pid, problems in dialect_problems.items():
        for problem in problems:
            block([pid], problem)

    # a process calling a process that cannot run cannot run either
    changed = True
    while changed:
        changed = False
        for pid in list(specs):
            if pid in blocking:
                continue
            for called in subprocess_specs[pid]:
                if called in blocking:
                    pdoc, pproc = process_elements[pid]
                    _, ca = locator._find_call_activity(called, pproc, pdoc)
                    block([pid], pdoc.issue(ca if ca is not None else pproc,
                                            f"calls process '{called}' which cannot be executed"))
                    changed = True
                    break

    processes: dict[str, ProcessModel] = {}
    non_exec: list[str] = []
    reasons: dict[str, str] = {}
    non_exec_models: dict[str, ProcessModel] = {}
    for pid, (doc, proc) in process_elements.items():
        if pid in declared_exec and pid not in blocking and pid in specs:
            processes[pid] = md.build_process_model(doc, proc, index, True)
            continue
        if pid in declared_exec:
            problems = blocking.get(pid, [])
            if strict:
                issues.extend(problems)
                continue
            warnings.extend(problems)
            first = problems[0] if problems else None
            reasons[pid] = "declared executable but cannot be executed" + (f": {first}" if first else "")
            specs.pop(pid, None)
            subprocess_specs.pop(pid, None)
        else:
            flag = proc.get("isExecutable")
            reasons[pid] = 'isExecutable="%s"' % flag if flag is not None else "isExecutable attribute missing"
        non_exec.append(pid)
        non_exec_models[pid] = md.build_process_model(doc, proc, index, False)

    if issues:
        raise DeploymentInvalid(_dedupe(issues))

    # ---- collaborations --------------------------------------------------------------------------
    collaborations: dict[str, CollaborationModel] = {}
    collaboration_specs: dict[str, tuple[Any, dict[str, Any]]] = {}
    for doc in bpmn_docs:
        for coll in md.build_collaborations(doc, index):
            for p in coll.participants:
                p["executable"] = p.get("process_ref") in processes
            collaborations[coll.id] = coll
            runnable = [p["process_ref"] for p in coll.participants if p["executable"]]
            if len(runnable) > 1:
                try:
                    parser = new_parser()
                    parser.find_all_specs = lambda: None  # only build what the collaboration needs
                    for pid, pp in parser.process_parsers.items():
                        if pid in process_elements and pid not in processes:
                            pp.process_executable = False  # demoted (lenient mode): never run it
                    if coll.id in parser.collaborations:
                        collaboration_specs[coll.id] = parser.get_collaboration(coll.id)
                except Exception as exc:
                    el = doc.by_id(coll.id) or doc.root
                    warnings.append(locator.from_exception(exc, doc, el))

    return ParsedDeployment(
        files=originals,
        file_kinds=dict(kinds),
        file_processes=file_processes,
        processes=processes,
        non_executable=non_exec,
        non_executable_reasons=reasons,
        non_executable_models=non_exec_models,
        specs={pid: specs[pid] for pid in processes},
        subprocess_specs={pid: subprocess_specs[pid] for pid in processes},
        decisions=decisions,
        collaborations=collaborations,
        collaboration_specs=collaboration_specs,
        warnings=_dedupe(warnings),
    )


def _check_persistable(doc: XmlDocument, proc, spec, subs, locator: "_Locator") -> SourceIssue | None:
    """Every executable spec is stored as JSON once per version: make sure that works now."""
    try:
        spec_to_json(spec, subs)
        return None
    except Exception as exc:
        reg = _registry()
        for s in [spec, *subs.values()]:
            for ts in s.task_specs.values():
                if type(ts) not in reg.typenames:
                    d, el = locator.find_id(getattr(ts, "bpmn_id", None), doc)
                    if el is not None:
                        return d.issue(el, f"{md.local(el)} '{el.get('id')}': this construct "
                                           f"({type(ts).__name__}) is not supported by the engine")
        return doc.issue(proc, f"the process cannot be stored: {_exc_message(exc)}")


def _check_expression(validator: ScriptValidator, doc: XmlDocument, el, what: str, expr: str) -> SourceIssue | None:
    try:
        validator(expr)
    except Exception as exc:  # the validator's way of refusing
        detail = str(getattr(exc, "detail", None) or exc) or type(exc).__name__
        label = f"{md.local(el)} '{el.get('id')}'" if el.get("id") else md.local(el)
        return doc.issue(el, f"{what} of {label} refused: {detail}")
    return None


def _inside(el, container) -> bool:
    return any(a is container for a in el.iterancestors()) or el is container


def _uses_decision(process_el, decision_id: str) -> bool:
    return any(
        bt.get("{%s}decisionRef" % md.CAMUNDA_NS) == decision_id
        for bt in process_el.iter(md.q("businessRuleTask"))
    )


def _uses_any_decision(process_el, dmn_doc: XmlDocument) -> bool:
    ns = etree.QName(dmn_doc.root).namespace
    ids = {d.get("id") for d in dmn_doc.root.iter("{%s}decision" % ns)}
    return any(bt.get("{%s}decisionRef" % md.CAMUNDA_NS) in ids for bt in process_el.iter(md.q("businessRuleTask")))


# --------------------------------------------------------------------------------------------------
# spec serialisation (stored once per process definition version)
# --------------------------------------------------------------------------------------------------

SPEC_FORMAT = "itsmflow.spiff-spec/1"

#: Serializer configuration matching the specs produced here: SpiffWorkflow's Camunda configuration
#: plus the plain BPMN ``ServiceTask`` (which the Camunda configuration lacks) and the task specs with
#: Camunda input/output mappings (:mod:`.camunda`). The engine must use
#: the same configuration to serialise workflow instances:
#: ``BpmnWorkflowSerializer(BpmnWorkflowSerializer.configure(SERIALIZER_CONFIG))``.
SERIALIZER_CONFIG = {**CAMUNDA_CONFIG, ServiceTask: BpmnTaskSpecConverter, **dialect.IO_SERIALIZER_CONFIG}


@lru_cache(maxsize=1)
def _registry():
    return BpmnWorkflowSerializer.configure(SERIALIZER_CONFIG)


def spec_to_json(spec, subprocess_specs: dict[str, Any] | None) -> str:
    """Serialise a process spec and its sub-process specs (SpiffWorkflow's Camunda converters)."""
    reg = _registry()
    dct = {
        "format": SPEC_FORMAT,
        "spiff_serializer_version": SPIFF_SERIALIZER_VERSION,
        "spec": reg.convert(spec),
        "subprocess_specs": {name: reg.convert(s) for name, s in (subprocess_specs or {}).items() if s is not None},
    }
    return json.dumps(dct, sort_keys=True, separators=(",", ":"))


def spec_from_json(s: str | bytes) -> tuple[Any, dict[str, Any]]:
    """Inverse of :func:`spec_to_json`: ``(BpmnProcessSpec, {name: BpmnProcessSpec})``."""
    dct = json.loads(s)
    if not isinstance(dct, dict) or dct.get("format") != SPEC_FORMAT:
        raise ValueError(f"not a serialised spec (expected format {SPEC_FORMAT!r})")
    reg = _registry()
    spec = reg.restore(dct["spec"])
    subs = {name: reg.restore(v) for name, v in dct.get("subprocess_specs", {}).items()}
    return spec, subs
