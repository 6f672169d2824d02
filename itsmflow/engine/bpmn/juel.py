"""Translation of the JUEL subset Camunda 7 models use into sandbox (Python) expressions.

Camunda Modeler writes conditions, timer values and other expressions as Java Unified Expression
Language (``${approved}``, ``${amount > 1000 && region == 'EU'}``). The engine evaluates only Python
in its sandbox, so a JUEL expression is *translated* at deploy time into Python expression text which
then goes through the same deploy-time check (:func:`itsmflow.engine.sandbox.check_expression`) and
the same run-time sandbox as any other expression: there is no second evaluator and no escape.

The subset (a tokenizer and a recursive-descent parser following the EL 2.2 grammar and precedence):

=========================================  ================================================
JUEL                                       Python
=========================================  ================================================
``${x}`` / ``#{x}`` (one whole expression)  ``x``
``true`` ``false`` ``null``                 ``True`` ``False`` ``None``
``'a'`` ``"a"`` (``\\'`` ``\\"`` ``\\\\``)    ``'a'``
``12`` ``1.5`` ``1e3``                      the same number
``a.b``  ``a['b']``  ``a[0]``               ``a['b']``  ``a['b']``  ``a[0]`` (variables are JSON data)
``!x`` ``not x``                            ``(not x)``
``-x``                                      ``(-x)``
``empty x``                                 ``(x in (None, '', [], {}))``
``* / div % mod + -``                       ``* / / % % + -``
``< > <= >= lt gt le ge``                   ``< > <= >=``
``== != eq ne``                             ``== !=``
``&& and || or``                            ``and or``
``c ? a : b``                               ``(a if c else b)``
=========================================  ================================================

Anything else is refused with :class:`JuelError` (position inside the expression): composite text
(``Hello ${name}``), method calls (``${list.size()}``), functions (``${fn:length(x)}``), ``instanceof``,
lambda/assignment/concatenation operators of EL 3.0 (``->``, ``=``, ``+=``, ``;``), Camunda context
objects (``execution``, ``task``, beans such as ``${myBean.x}`` are just unknown variables), variable
names that are Python keywords or start with ``_``. A refusal becomes a deploy error located at the
element, never a condition that silently evaluates differently.

Known differences in semantics (documented in docs/modeller.md): JUEL coerces operands
(``'5' > 3`` is true, ``'1' == 1`` is true); Python does not (a comparison of a string with a number
raises and becomes an incident, ``'1' == 1`` is false). ``+`` on two strings concatenates in Python.
An unknown variable fails in both (Camunda: ``PropertyNotFoundException``, here ``NameError``).
"""

from __future__ import annotations

import math

import keyword
import re
from dataclasses import dataclass

__all__ = ["JuelError", "is_juel", "translate", "JUEL_LANGUAGES"]

#: ``language`` attribute values that select JUEL explicitly (Camunda's own names for it)
JUEL_LANGUAGES = {"juel", "el", "javax.el", "http://java.sun.com/products/jsp/", "http://java.sun.com/jsp/el"}

#: names Camunda resolves to Java context objects; they do not exist here
CONTEXT_OBJECTS = {"execution", "task", "externalTask", "variableScope", "connector", "authenticatedUserId",
                   "dateTime", "now"}

MAX_LENGTH = 4000  # translated expressions stay far below the sandbox's source limit
MAX_DEPTH = 60


class JuelError(ValueError):
    """A JUEL expression outside the supported subset (``position`` is 0-based in the source text)."""

    def __init__(self, message: str, position: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.position = position

    def __str__(self) -> str:
        if self.position is None:
            return self.message
        return f"{self.message} (at character {self.position + 1} of the expression)"


def is_juel(text: str | None, language: str | None = None) -> bool:
    """True for text Camunda would evaluate as JUEL: ``${…}`` / ``#{…}``, or an explicit JUEL language."""
    if language and language.strip().lower() in JUEL_LANGUAGES:
        return True
    if language and "python" in language.strip().lower():
        return False  # an explicit Python expression: ``${`` is then text inside it
    if text is None:
        return False
    return "${" in text or "#{" in text


# -- tokenizer -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Token:
    kind: str  # ident, keyword, number, string, op, end
    value: object
    pos: int
    text: str


KEYWORDS = {"true", "false", "null", "empty", "not", "and", "or", "eq", "ne", "lt", "gt", "le", "ge",
            "div", "mod", "instanceof"}
_OPERATORS = ("==", "!=", "<=", ">=", "&&", "||", "->", "+=", "<", ">", "!", "+", "-", "*", "/", "%",
              "(", ")", "[", "]", ".", "?", ":", ",", "=", ";", "{", "}")
_NUMBER = re.compile(r"(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?")
_IDENT = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*")
_ESCAPES = {"\\": "\\", "'": "'", '"': '"'}


def tokenize(src: str, offset: int = 0) -> list[Token]:
    tokens: list[Token] = []
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if c in " \t\r\n":
            i += 1
            continue
        start = i
        if c in "'\"":
            quote, i, out = c, i + 1, []
            while True:
                if i >= n:
                    raise JuelError("unterminated string literal", offset + start)
                ch = src[i]
                if ch == "\\":
                    nxt = src[i + 1] if i + 1 < n else ""
                    if nxt not in _ESCAPES:
                        raise JuelError(f"unsupported escape \\{nxt} in a string literal (only \\' \\\" \\\\)",
                                        offset + i)
                    out.append(_ESCAPES[nxt])
                    i += 2
                    continue
                if ch == quote:
                    i += 1
                    break
                out.append(ch)
                i += 1
            tokens.append(Token("string", "".join(out), offset + start, src[start:i]))
            continue
        m = _NUMBER.match(src, i)
        if m and (c.isdigit() or (c == "." and i + 1 < n and src[i + 1].isdigit())):
            text = m.group(0)
            value: object = float(text) if any(ch in text for ch in ".eE") else int(text)
            if isinstance(value, int) and len(text) > 19:
                raise JuelError("integer literal out of range", offset + start)
            if isinstance(value, float) and not math.isfinite(value):
                raise JuelError("number literal out of range", offset + start)
            tokens.append(Token("number", value, offset + start, text))
            i = m.end()
            continue
        m = _IDENT.match(src, i)
        if m:
            word = m.group(0)
            tokens.append(Token("keyword" if word in KEYWORDS else "ident", word, offset + start, word))
            i = m.end()
            continue
        for op in _OPERATORS:
            if src.startswith(op, i):
                tokens.append(Token("op", op, offset + start, op))
                i += len(op)
                break
        else:
            raise JuelError(f"unexpected character {c!r}", offset + start)
    tokens.append(Token("end", None, offset + n, ""))
    return tokens


# -- parser (EL 2.2 precedence, lowest first: ?:, or, and, eq, relational, additive, multiplicative, unary) --

_EQ = {"==": "==", "!=": "!=", "eq": "==", "ne": "!="}
_REL = {"<": "<", ">": ">", "<=": "<=", ">=": ">=", "lt": "<", "gt": ">", "le": "<=", "ge": ">="}
_ADD = {"+": "+", "-": "-"}
_MUL = {"*": "*", "/": "/", "div": "/", "%": "%", "mod": "%"}
_REFUSED_OPS = {
    "->": "lambda expressions (EL 3.0) are not supported",
    "=": "assignment is not supported (did you mean == ?)",
    "+=": "string concatenation with += (EL 3.0) is not supported",
    ";": "expression sequences with ; are not supported",
    "{": "collection literals are not supported",
    ",": "unexpected ','",
}


class _Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.i = 0
        self.depth = 0

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def take(self) -> Token:
        t = self.tokens[self.i]
        self.i += 1
        return t

    def at(self, *values: str) -> bool:
        t = self.tok
        return t.kind in ("op", "keyword") and t.value in values

    def expect(self, value: str) -> Token:
        if not self.at(value):
            self.fail(f"expected '{value}'")
        return self.take()

    def fail(self, message: str, tok: Token | None = None):
        tok = tok or self.tok
        if tok.kind == "op" and tok.value in _REFUSED_OPS:
            raise JuelError(_REFUSED_OPS[tok.value], tok.pos)
        what = "end of expression" if tok.kind == "end" else repr(tok.text)
        raise JuelError(f"{message}, found {what}", tok.pos)

    def nested(self):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise JuelError("expression is nested too deeply", self.tok.pos)

    def parse(self) -> str:
        out = self.ternary()
        if self.tok.kind != "end":
            self.fail("unexpected input after the expression")
        return out

    def ternary(self) -> str:
        self.nested()
        cond = self.or_()
        if self.at("?"):
            self.take()
            yes = self.ternary()
            self.expect(":")
            no = self.ternary()
            cond = f"({yes} if {cond} else {no})"
        self.depth -= 1
        return cond

    def _binary(self, sub, table: dict[str, str]) -> str:
        left = sub()
        while self.tok.kind in ("op", "keyword") and self.tok.value in table:
            op = table[self.take().value]
            right = sub()
            left = f"({left} {op} {right})"
        return left

    def or_(self) -> str:
        left = self.and_()
        while self.at("||", "or"):
            self.take()
            left = f"({left} or {self.and_()})"
        return left

    def and_(self) -> str:
        left = self.equality()
        while self.at("&&", "and"):
            self.take()
            left = f"({left} and {self.equality()})"
        return left

    def equality(self) -> str:
        return self._binary(self.relational, _EQ)

    def relational(self) -> str:
        return self._binary(self.additive, _REL)

    def additive(self) -> str:
        return self._binary(self.multiplicative, _ADD)

    def multiplicative(self) -> str:
        return self._binary(self.unary, _MUL)

    def unary(self) -> str:
        self.nested()
        if self.at("!", "not"):
            self.take()
            out = f"(not {self.unary()})"
        elif self.at("-"):
            self.take()
            out = f"(-{self.unary()})"
        elif self.at("empty"):
            self.take()
            out = f"({self.unary()} in (None, '', [], {{}}))"
        else:
            out = self.value()
        self.depth -= 1
        return out

    def value(self) -> str:
        base = self.primary()
        # property and index access
        while self.at(".", "["):
            if self.take().value == ".":
                name = self.tok
                if name.kind not in ("ident", "keyword"):
                    self.fail("expected a property name after '.'")
                self.take()
                if self.at("("):
                    raise JuelError(f"method calls are not supported ({name.text}(...))", name.pos)
                base = f"{base}[{str(name.value)!r}]"
            else:
                index = self.ternary()
                self.expect("]")
                base = f"{base}[{index}]"
        if self.at("("):
            raise JuelError("function and method calls are not supported", self.tok.pos)
        if self.at("instanceof"):
            raise JuelError("instanceof is not supported", self.tok.pos)
        return base

    def primary(self) -> str:
        t = self.tok
        if t.kind == "number":
            self.take()
            return repr(t.value)
        if t.kind == "string":
            self.take()
            return repr(t.value)
        if t.kind == "keyword":
            if t.value in ("true", "false", "null"):
                self.take()
                return {"true": "True", "false": "False", "null": "None"}[t.value]
            if t.value == "instanceof":
                raise JuelError("instanceof is not supported", t.pos)
            self.fail("expected a value")
        if t.kind == "ident":
            self.take()
            name = str(t.value)
            if self.at(":") and self.tokens[self.i + 1].kind == "ident" and self.tokens[self.i + 2:self.i + 3] \
                    and self.tokens[self.i + 2].kind == "op" and self.tokens[self.i + 2].value == "(":
                raise JuelError(f"functions are not supported ({name}:{self.tokens[self.i + 1].value}(...))", t.pos)
            if self.at("("):
                raise JuelError(f"function calls are not supported ({name}(...))", t.pos)
            if "$" in name:
                raise JuelError(f"'$' in a variable name is not supported ({name!r})", t.pos)
            if name.startswith("_"):
                raise JuelError(f"variable names starting with '_' are not allowed ({name!r})", t.pos)
            if keyword.iskeyword(name) or keyword.issoftkeyword(name) or name in ("True", "False", "None"):
                raise JuelError(f"variable name {name!r} is a reserved word in this engine", t.pos)
            if name in CONTEXT_OBJECTS:
                raise JuelError(f"the Camunda context object {name!r} is not available; use process variables",
                                t.pos)
            return _variable(name, t.pos)
        if t.kind == "op" and t.value == "(":
            self.take()
            inner = self.ternary()
            self.expect(")")
            return inner
        self.fail("expected a value")
        raise AssertionError("unreachable")  # pragma: no cover


def _sandbox_builtin_names() -> frozenset[str]:
    from itsmflow.engine.sandbox.guards import BOUND_BUILTINS, static_builtins

    return frozenset(n for n in (*static_builtins(), *BOUND_BUILTINS) if not n.startswith("_"))


_DATA_TYPES = ("bool", "int", "float", "str", "dict", "list", "tuple", "set", "datetime", "date", "timedelta",
               "Decimal")
_SLICEABLE = {"list": "[]", "str": "''", "tuple": "()"}


def _variable(name: str, pos: int) -> str:
    """A variable reference. Python falls back to a builtin when a variable with a builtin's name is
    not set (``list``); JUEL fails on an unknown variable. Such names get a guard that fails the same
    way (``KeyError: 'unknown variable list'``) instead of silently comparing the builtin."""
    if name not in _sandbox_builtin_names():
        return name
    if name not in _SLICEABLE and name in _DATA_TYPES or name in ("isinstance",):
        raise JuelError(f"variable name {name!r} is the name of a builtin of the expression sandbox; "
                        "rename the variable", pos)
    types = ", ".join(t for t in _DATA_TYPES if t != name)
    guard = f"{name} is None or isinstance({name}, ({types}))"
    if name in _SLICEABLE:
        guard += f" or {name}[0:0] == {_SLICEABLE[name]}"
    return f"({name} if {guard} else {{}}[{('unknown variable ' + name)!r}])"


def translate(text: str) -> str:
    """``${…}`` / ``#{…}`` JUEL text → Python expression text; raises :class:`JuelError`."""
    if text is None:
        raise JuelError("empty expression")
    if len(text) > MAX_LENGTH:
        raise JuelError(f"expression is too long (more than {MAX_LENGTH} characters)")
    lead = len(text) - len(text.lstrip())
    body = text.strip()
    if not (body.startswith("${") or body.startswith("#{")):
        raise JuelError("a JUEL expression must be one ${...} (composite text is not supported)", lead)
    end = _matching_brace(body)
    if end != len(body) - 1:
        raise JuelError("a JUEL expression must be exactly one ${...}; text around or after it "
                        "(composite expressions) is not supported", lead + (end + 1 if end >= 0 else 0))
    inner = body[2:-1]
    if not inner.strip():
        raise JuelError("empty expression ${}", lead)
    tokens = tokenize(inner, offset=lead + 2)
    return _Parser(tokens).parse()


def _matching_brace(body: str) -> int:
    """Index of the ``}`` closing the opening ``${`` (strings skipped), or -1."""
    depth, i, quote = 0, 1, None
    while i < len(body):
        c = body[i]
        if quote:
            if c == "\\":
                i += 2
                continue
            if c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1
