"""XML Schema validation of BPMN 2.0 and DMN documents.

The schemas are the ones shipped with SpiffWorkflow (``bpmn/parser/schema/BPMN20.xsd`` and
``dmn/parser/schema/DMN*.xsd``). They are loaded once per process with a resolver that only serves
files from those two directories, so building a schema can never touch the network or any other
file. Vendor extensions (``camunda:*``, bpmn.io colours, Signavio, ...) are allowed by the BPMN
schema itself (``extensionElements`` takes ``##other`` elements, every ``tBaseElement`` takes
``##other`` attributes).

DMN: DMN 1.1 (``http://www.omg.org/spec/DMN/20151101/dmn.xsd``) and DMN 1.3
(``https://www.omg.org/spec/DMN/20191111/MODEL/``) are validated. SpiffWorkflow's DMN 1.2 schema set
is broken (``DMNDI12.xsd`` is the DI schema, the DMNDI 1.2 one is missing), so DMN 1.2 files and
unknown DMN namespaces (e.g. DMN 1.4/1.5) skip XSD validation; they still go through the DMN parser.
"""

from __future__ import annotations

import os
import re
import threading
from functools import lru_cache

import SpiffWorkflow
from lxml import etree

from itsmflow.engine.errors import SourceIssue

from .xml import XmlDocument

BPMN_MODEL_NS = "http://www.omg.org/spec/BPMN/20100524/MODEL"

DMN_NAMESPACES = {
    "http://www.omg.org/spec/DMN/20151101/dmn.xsd": "DMN.xsd",        # DMN 1.1
    "http://www.omg.org/spec/DMN/20180521/MODEL/": None,              # DMN 1.2 (schema unusable)
    "https://www.omg.org/spec/DMN/20191111/MODEL/": "DMN13.xsd",      # DMN 1.3
    "https://www.omg.org/spec/DMN/20211108/MODEL/": None,             # DMN 1.4
    "https://www.omg.org/spec/DMN/20230324/MODEL/": None,             # DMN 1.5
}

_SPIFF_DIR = os.path.dirname(os.path.abspath(SpiffWorkflow.__file__))
BPMN_SCHEMA_DIR = os.path.join(_SPIFF_DIR, "bpmn", "parser", "schema")
DMN_SCHEMA_DIR = os.path.join(_SPIFF_DIR, "dmn", "parser", "schema")

MAX_ISSUES_PER_FILE = 50

_lock = threading.Lock()


class _LocalSchemaResolver(etree.Resolver):
    """Serve schema imports from the given directory only; refuse everything else."""

    def __init__(self, directory: str) -> None:
        super().__init__()
        self.directory = os.path.realpath(directory)

    def resolve(self, system_url, public_id, context):
        url = system_url or ""
        if url.startswith("file://"):
            url = url[len("file://"):]
        if "://" in url:
            raise etree.XMLSchemaParseError(f"refusing to load remote schema {system_url!r}")
        path = os.path.realpath(url if os.path.isabs(url) else os.path.join(self.directory, url))
        if os.path.dirname(path) != self.directory or not os.path.isfile(path):
            raise etree.XMLSchemaParseError(f"refusing to load schema {system_url!r}")
        return self.resolve_filename(path, context)


def _load_schema(directory: str, filename: str) -> etree.XMLSchema:
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
    parser.resolvers.add(_LocalSchemaResolver(directory))
    doc = etree.parse(os.path.join(directory, filename), parser)
    return etree.XMLSchema(doc)


@lru_cache(maxsize=None)
def bpmn_schema() -> etree.XMLSchema:
    """The BPMN 2.0 schema (built once per process)."""
    return _load_schema(BPMN_SCHEMA_DIR, "BPMN20.xsd")


@lru_cache(maxsize=None)
def dmn_schema(namespace: str) -> etree.XMLSchema | None:
    filename = DMN_NAMESPACES.get(namespace)
    if filename is None:
        return None
    try:
        return _load_schema(DMN_SCHEMA_DIR, filename)
    except etree.XMLSchemaParseError:  # pragma: no cover - shipped schema broken
        return None


def document_kind(root: etree._Element) -> str | None:
    """``"bpmn"`` / ``"dmn"`` from the root element, else None."""
    if not isinstance(root.tag, str):
        return None
    q = etree.QName(root)
    if q.localname != "definitions":
        return None
    if q.namespace == BPMN_MODEL_NS:
        return "bpmn"
    if q.namespace in DMN_NAMESPACES or (q.namespace or "").startswith(
        ("http://www.omg.org/spec/DMN/", "https://www.omg.org/spec/DMN/")
    ):
        return "dmn"
    return None


_ELEMENT_IN_MSG = re.compile(r"^Element '\{([^}]*)\}([^']+)'")


def _element_for(doc: XmlDocument, entry, nsmap: dict) -> etree._Element | None:
    path = getattr(entry, "path", None)
    if path:
        try:
            found = doc.tree.xpath(path, namespaces=nsmap)
            if found and isinstance(found[0], etree._Element):
                return found[0]
        except etree.XPathError:
            pass
    m = _ELEMENT_IN_MSG.match(entry.message or "")
    if m:
        tag = "{%s}%s" % (m.group(1), m.group(2))
        candidates = [e for e in doc.tree.iter(tag) if e.sourceline == entry.line]
        if candidates:
            return candidates[0]
    return None


def _shorten_expected(msg: str, limit: int = 8) -> str:
    def repl(m: re.Match) -> str:
        items = [s.strip() for s in m.group(1).split(",")]
        if len(items) > limit:
            items = items[:limit] + [f"... {len(items) - limit} more"]
        return "Expected is one of ( " + ", ".join(items) + " )"

    return re.sub(r"Expected is one of \(([^)]*)\)", repl, msg)


def validate_document(doc: XmlDocument, kind: str | None = None) -> list[SourceIssue]:
    """Validate ``doc`` against the BPMN or DMN schema; return the issues (empty when valid)."""
    kind = kind or document_kind(doc.root)
    if kind == "bpmn":
        schema = bpmn_schema()
    elif kind == "dmn":
        schema = dmn_schema(etree.QName(doc.root).namespace)
        if schema is None:
            return []
    else:
        return []

    tree = doc.tree
    # bpmn.js writes formalExpression where the schema wants messagePath inside
    # correlationPropertyRetrievalExpression; validate a copy with the tag fixed (SpiffWorkflow's own
    # validator does the same, in place). The copy keeps source lines.
    if kind == "bpmn":
        odd = tree.xpath(
            "//bpmn:correlationPropertyRetrievalExpression/bpmn:formalExpression",
            namespaces={"bpmn": BPMN_MODEL_NS},
        )
        if odd:
            import copy

            tree = copy.deepcopy(tree)
            for el in tree.xpath(
                "//bpmn:correlationPropertyRetrievalExpression/bpmn:formalExpression",
                namespaces={"bpmn": BPMN_MODEL_NS},
            ):
                el.tag = "{%s}messagePath" % BPMN_MODEL_NS

    with _lock:  # an XMLSchema's error_log is per instance
        valid = schema.validate(tree)
        entries = list(schema.error_log) if not valid else []
    if valid:
        return []

    nsmap = {p: uri for uri, p in doc.prefixes.items() if p}
    # elements of ``tree`` may be copies: map back by line and tag through the original document
    issues: list[SourceIssue] = []
    seen = set()
    for entry in entries:
        el = _element_for(XmlDocument(doc.name, doc.data, tree, doc.codec), entry, nsmap) if tree is not doc.tree \
            else _element_for(doc, entry, nsmap)
        if el is not None and tree is not doc.tree:
            el = next((e for e in doc.tree.iter(el.tag) if e.sourceline == el.sourceline), None)
        line, col = doc.locate(el) if el is not None else (entry.line or None, entry.column or 0)
        if line is None:
            line = entry.line or None
        msg = _shorten_expected(doc.short_names((entry.message or "schema violation").strip()))
        key = (line, col, msg)
        if key in seen:
            continue
        seen.add(key)
        issues.append(SourceIssue(doc.name, line, col, f"schema: {msg}"))
        if len(issues) >= MAX_ISSUES_PER_FILE:
            remaining = len(entries) - len(seen)
            if remaining > 0:
                issues.append(SourceIssue(doc.name, None, None, f"schema: {remaining} more schema errors not shown"))
            break
    return issues
