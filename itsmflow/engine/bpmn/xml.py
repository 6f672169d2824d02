"""Hardened XML parsing of uploaded BPMN/DMN files.

Every uploaded document goes through :func:`parse_document` before anything else looks at it:

* a size cap is checked before a single byte is parsed;
* the document's encoding is sniffed and restricted to a small allow-list (UTF-8/16/32, ASCII,
  ISO-8859-*, windows-125x); exotic encodings such as UTF-7 could otherwise hide markup from the
  pre-scan;
* the prolog is scanned and any ``<!DOCTYPE`` (hence any entity declaration, internal subset or
  external DTD) is refused outright - this is what stops XXE, billion-laughs and parameter-entity
  attacks before libxml2 sees them; a second check after parsing looks at ``docinfo`` and for
  entity nodes, in case anything ever slips through;
* the parser itself is configured to never resolve entities, load DTDs or touch the network, and
  keeps libxml2's default (non-"huge") limits on depth and text size;
* well-formedness errors are reported as :class:`SourceIssue` with the line and column libxml2 gives.

The original bytes are never modified: the parsed tree is built from them and they are kept as-is.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, field
from typing import Iterable

from lxml import etree

from itsmflow.engine.errors import DeploymentInvalid, SourceIssue

DEFAULT_MAX_BYTES = 5 * 1024 * 1024

DOCTYPE_REFUSED = "DOCTYPE/entity declarations are not allowed (XXE / entity expansion protection)"

# Encodings we accept (normalised codec names, see ``codecs.lookup(...).name``).
_ALLOWED_CODECS = {
    "utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be",
    "ascii", "latin-1",
    *(f"iso8859-{i}" for i in range(1, 17)),
    *(f"cp{i}" for i in range(1250, 1259)),
}

_XML_DECL_ENCODING = re.compile(rb"""^<\?xml[^>]*?\sencoding\s*=\s*["']([A-Za-z0-9._:\-]+)["']""")


def _format_size(n: int) -> str:
    if n >= 1024 * 1024:
        return f"{n / (1024 * 1024):.1f} MB"
    if n >= 1024:
        return f"{n / 1024:.1f} KB"
    return f"{n} bytes"


def make_parser() -> etree.XMLParser:
    """A fresh hardened lxml parser (parsers keep an error log, so never share one)."""
    parser = etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=False,
        remove_pis=False,
        strip_cdata=False,
        collect_ids=True,
    )
    parser.resolvers.add(_RefuseAllResolver())
    return parser


class _RefuseAllResolver(etree.Resolver):
    """Belt and braces: if libxml2 ever asks to load anything external while parsing an upload,
    resolve it to an empty document instead of reading a file or the network."""

    def resolve(self, system_url, public_id, context):  # noqa: D401 - lxml API
        return self.resolve_string("", context)


def sniff_encoding(data: bytes) -> tuple[str | None, str | None]:
    """Return ``(python_codec, refusal_reason)`` for the raw bytes of an XML document.

    The codec is only used for the DOCTYPE pre-scan and for computing columns; lxml does its own
    decoding of the original bytes.
    """
    head = data[:4]
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig", None
    if head.startswith(codecs.BOM_UTF32_LE) or head.startswith(codecs.BOM_UTF32_BE):
        return "utf-32", None
    if head.startswith(codecs.BOM_UTF16_LE) or head.startswith(codecs.BOM_UTF16_BE):
        return "utf-16", None
    if head == b"\x00\x00\x00<":
        return "utf-32-be", None
    if head == b"<\x00\x00\x00":
        return "utf-32-le", None
    if head[:2] == b"\x00<":
        return "utf-16-be", None
    if head[:2] == b"<\x00":
        return "utf-16-le", None
    if head == b"\x4c\x6f\xa7\x94":
        return None, "EBCDIC-encoded documents are not supported"
    m = _XML_DECL_ENCODING.match(data[:200].lstrip(b" \t\r\n"))
    if m is None:
        return "utf-8", None
    declared = m.group(1).decode("ascii")
    try:
        name = codecs.lookup(declared).name
    except LookupError:
        return None, f"unsupported encoding {declared!r}"
    if name not in _ALLOWED_CODECS:
        return None, f"unsupported encoding {declared!r} (use UTF-8)"
    if name in ("utf-16", "utf-32", "utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"):
        # Declared as 16/32-bit but the bytes look ASCII-compatible: libxml2 would reject it anyway.
        return None, f"declared encoding {declared!r} does not match the document bytes"
    return name, None


def find_doctype(text: str) -> int | None:
    """Scan the prolog (everything before the root element) and return the offset of a
    ``<!DOCTYPE`` (or any other ``<!`` markup declaration that is not a comment), else None.

    A DOCTYPE may only appear in the prolog, and entity declarations only inside a DOCTYPE, so this
    catches every entity/DTD construct. Malformed prologs are left for the parser to report.
    """
    i, n = 0, len(text)
    if text.startswith("\ufeff"):
        i = 1
    while i < n:
        while i < n and text[i] in " \t\r\n":
            i += 1
        if text.startswith("<?", i):
            j = text.find("?>", i + 2)
            if j < 0:
                return None
            i = j + 2
        elif text.startswith("<!--", i):
            j = text.find("-->", i + 4)
            if j < 0:
                return None
            i = j + 3
        elif text.startswith("<!", i):
            return i
        else:
            return None
    return None


def _line_col(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    col = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return line, col


@dataclass
class XmlDocument:
    """A parsed, hardened XML document together with its original bytes."""

    name: str
    data: bytes
    tree: etree._ElementTree
    codec: str = "utf-8"
    _lines: list[str] | None = field(default=None, repr=False)
    _by_line_tag: dict | None = field(default=None, repr=False)
    _ids: dict | None = field(default=None, repr=False)
    _prefixes: dict | None = field(default=None, repr=False)

    @property
    def root(self) -> etree._Element:
        return self.tree.getroot()

    # --- source positions ---------------------------------------------------------------------

    @property
    def lines(self) -> list[str]:
        if self._lines is None:
            text = self.data.decode(self.codec, errors="replace")
            self._lines = text.split("\n")
        return self._lines

    @staticmethod
    def _qname(el: etree._Element) -> str:
        local = etree.QName(el).localname
        return f"{el.prefix}:{local}" if el.prefix else local

    def locate(self, el: etree._Element | None) -> tuple[int | None, int | None]:
        """Line and 1-based column of the ``<`` that starts ``el``'s start tag (best effort).

        libxml2 records the line where the start tag *ends*; for multi-line start tags we scan
        backwards to the line where it begins. When several elements with the same tag start on
        one line, the n-th element maps to the n-th occurrence.
        """
        if el is None or not isinstance(el.tag, str):
            return None, None
        line = el.sourceline
        if not line:
            return None, None
        qname = self._qname(el)
        pattern = re.compile(r"<" + re.escape(qname) + r"(?=[\s/>]|$)")
        lines = self.lines
        if line > len(lines):
            return line, 1
        # n-th element with this tag whose start tag ends on this line
        if self._by_line_tag is None:
            index: dict = {}
            for e in self.tree.iter():
                if isinstance(e.tag, str) and e.sourceline:
                    index.setdefault((e.sourceline, self._qname(e)), []).append(e)
            self._by_line_tag = index
        siblings = self._by_line_tag.get((line, qname), [el])
        try:
            k = siblings.index(el)
        except ValueError:
            k = 0
        matches = [m.start() for m in pattern.finditer(lines[line - 1])]
        # if there are fewer occurrences than elements, the first ones began on earlier lines
        deficit = max(0, len(siblings) - len(matches))
        if matches and k >= deficit:
            return line, matches[min(k - deficit, len(matches) - 1)] + 1
        for back in range(line - 2, max(-1, line - 200), -1):
            found = [m.start() for m in pattern.finditer(lines[back])]
            if found:
                return back + 1, found[-1] + 1
        return line, 1

    def issue(self, el: etree._Element | None, message: str) -> SourceIssue:
        line, col = self.locate(el)
        return SourceIssue(self.name, line, col, message)

    # --- lookups ------------------------------------------------------------------------------

    def by_id(self, element_id: str | None) -> etree._Element | None:
        if not element_id:
            return None
        if self._ids is None:
            ids: dict = {}
            for e in self.tree.iter():
                if isinstance(e.tag, str):
                    v = e.get("id")
                    if v is not None:
                        ids.setdefault(v, e)
            self._ids = ids
        return self._ids.get(element_id)

    @property
    def prefixes(self) -> dict[str, str]:
        """namespace URI -> prefix used in this document ("" for a default namespace)."""
        if self._prefixes is None:
            out: dict[str, str] = {}
            for e in self.tree.iter():
                if not isinstance(e.tag, str):
                    continue
                for prefix, uri in e.nsmap.items():
                    if uri not in out or (out[uri] == "" and prefix):
                        out[uri] = prefix or ""
            self._prefixes = out
        return self._prefixes

    def short_names(self, message: str) -> str:
        """Replace ``{namespace}local`` by ``prefix:local`` (or ``local``) in a message."""

        def repl(m: re.Match) -> str:
            prefix = self.prefixes.get(m.group(1))
            return f"{prefix}:{m.group(2)}" if prefix else m.group(2)

        return re.sub(r"\{([^}]*)\}([A-Za-z_][\w.\-]*)", repl, message)


_MISMATCH = re.compile(r"Opening and ending tag mismatch: \S+ line \d+ and (\S+)")


def parse_document(
    name: str, data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES
) -> tuple[XmlDocument | None, list[SourceIssue]]:
    """Safely parse one uploaded document. Returns ``(document, [])`` or ``(None, issues)``."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        return None, [SourceIssue(name, None, None, "file content must be bytes")]
    data = bytes(data)
    if len(data) > max_bytes:
        return None, [
            SourceIssue(
                name, None, None,
                f"file is too large: {len(data)} bytes exceeds the limit of {max_bytes} bytes "
                f"({_format_size(max_bytes)})",
            )
        ]
    if not data.strip():
        return None, [SourceIssue(name, 1, 1, "file is empty")]

    codec, reason = sniff_encoding(data)
    if codec is None:
        return None, [SourceIssue(name, 1, 1, reason or "unsupported encoding")]
    try:
        text = data.decode(codec, errors="replace")
    except LookupError:  # pragma: no cover - codec came from codecs.lookup
        return None, [SourceIssue(name, 1, 1, "unsupported encoding")]

    offset = find_doctype(text)
    if offset is not None:
        line, col = _line_col(text, offset)
        return None, [SourceIssue(name, line, col, DOCTYPE_REFUSED)]

    parser = make_parser()
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        return None, [_syntax_issue(name, exc, parser, text)]
    except (ValueError, etree.LxmlError) as exc:
        return None, [SourceIssue(name, None, None, f"cannot parse XML: {exc}")]

    tree = root.getroottree()
    info = tree.docinfo
    if info.doctype or info.internalDTD is not None or info.externalDTD is not None:
        return None, [SourceIssue(name, 1, 1, DOCTYPE_REFUSED)]
    for node in tree.iter(etree.Entity):
        return None, [SourceIssue(name, node.sourceline, None, DOCTYPE_REFUSED)]

    return XmlDocument(name=name, data=data, tree=tree, codec=codec), []


def _syntax_issue(name: str, exc: etree.XMLSyntaxError, parser, text: str) -> SourceIssue:
    entries = [e for e in parser.error_log if e.level >= etree.ErrorLevels.ERROR] or list(exc.error_log)
    if entries:
        first = entries[0]
        line, col, msg = first.line, first.column, first.message
    else:
        line, col = exc.lineno, exc.offset
        msg = str(exc)
    msg = (msg or "malformed XML").strip()
    # libxml2 reports a tag mismatch at the end of the closing tag: point at its start instead.
    m = _MISMATCH.match(msg)
    if m and line:
        lines = text.split("\n")
        if line <= len(lines):
            src = lines[line - 1]
            end = col if col and col > 0 else len(src)
            tag = m.group(1).split(":")[-1]
            found = [x.start() for x in re.finditer(r"</(?:[\w.\-]+:)?" + re.escape(tag) + r"(?=[\s>]|$)", src[:end])]
            if found:
                col = found[-1] + 1
    if not line:
        line = None
    if col is not None and col < 1:
        col = 1
    return SourceIssue(name, line, col, f"XML syntax error: {msg}")


def parse_document_or_raise(name: str, data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> XmlDocument:
    doc, issues = parse_document(name, data, max_bytes=max_bytes)
    if issues or doc is None:
        raise DeploymentInvalid(issues)
    return doc


def iter_elements(el: etree._Element) -> Iterable[etree._Element]:
    """Element descendants (skips comments / processing instructions)."""
    for e in el.iter():
        if isinstance(e.tag, str):
            yield e
