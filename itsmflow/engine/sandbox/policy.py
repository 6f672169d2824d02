"""Static (AST) policy: which Python constructs untrusted expressions and scripts may use.

The check runs on the parsed source before anything is compiled; the first forbidden
construct raises :class:`SandboxViolation` naming the construct and its line.
"""

from __future__ import annotations

import ast
import string
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal

import _string

from ..errors import SandboxViolation


class SandboxSyntaxError(SandboxViolation, SyntaxError):
    """Source that is not valid Python. Also a ``SyntaxError``, which SpiffWorkflow's DMN
    engine relies on (it re-parses ``> 5`` as ``v > 5`` when ``validate`` raises one)."""

    def __str__(self) -> str:  # SyntaxError's own __str__ would append "(line N)" again
        return self.detail


# ---------------------------------------------------------------------------------------------
# attributes
# ---------------------------------------------------------------------------------------------

#: types whose public attributes may be used (the values a sandboxed program can hold)
_ATTRIBUTE_SOURCE_TYPES = (
    str, int, float, bool, complex, list, dict, tuple, set, frozenset, range, slice,
    Decimal, datetime, date, time, timedelta, timezone,
    type({}.keys()), type({}.values()), type({}.items()),
)

#: public attributes that are still refused (reach classes or bytes, or are not needed)
DENIED_ATTRIBUTES = frozenset({
    "mro",            # type.mro() -> object, the root of every class-walking escape
    "to_bytes", "from_bytes", "encode", "fromhex",   # no bytes in the sandbox
    "with_traceback", "add_note",                     # exceptions -> tracebacks -> frames
    "mapping",        # dict views -> mappingproxy
})

#: prefixes of attributes of frames, code, generators, coroutines, tracebacks, functions
_INTERNAL_PREFIXES = ("gi_", "f_", "tb_", "cr_", "ag_", "co_", "im_", "func_")


def _allowed_attributes() -> frozenset[str]:
    names: set[str] = set()
    for tp in _ATTRIBUTE_SOURCE_TYPES:
        names.update(n for n in dir(tp) if not n.startswith("_"))
    names -= DENIED_ATTRIBUTES
    return frozenset(n for n in names if not n.startswith(_INTERNAL_PREFIXES))


ALLOWED_ATTRIBUTES = _allowed_attributes()

#: attributes that are rewritten into a runtime guard (they can produce huge results,
#: reach attributes through format strings, or grow a list from C code)
GUARDED_ATTRIBUTES = frozenset({
    "format", "format_map", "join", "replace", "ljust", "rjust", "center", "zfill", "expandtabs",
    "translate", "strftime", "append", "insert", "extend", "fromkeys", "items", "popitem", "sort", "index",
    "count", "remove",
})

#: attributes that mutate their object (expressions using them get a data check afterwards)
MUTATING_ATTRIBUTES = frozenset({
    "append", "extend", "insert", "remove", "pop", "popitem", "clear", "update", "setdefault",
    "add", "discard", "sort", "reverse", "intersection_update", "difference_update",
    "symmetric_difference_update",
})

#: builtins that are not available; calling one is refused already at deploy time
DENIED_CALLS = frozenset({
    "eval", "exec", "compile", "open", "getattr", "setattr", "delattr", "hasattr", "vars", "globals",
    "locals", "dir", "type", "object", "super", "breakpoint", "input", "help", "memoryview",
    "bytearray", "bytes", "exit", "quit", "classmethod", "staticmethod", "property", "iter", "id",
    "issubclass",
})

# ---------------------------------------------------------------------------------------------
# nodes
# ---------------------------------------------------------------------------------------------

_ALLOWED_NODES: frozenset[type] = frozenset({
    ast.Module, ast.Expression,
    # statements
    ast.FunctionDef, ast.Return, ast.Delete, ast.Assign, ast.AugAssign, ast.AnnAssign, ast.For,
    ast.While, ast.If, ast.Raise, ast.Try, ast.Assert, ast.Expr, ast.Pass, ast.Break, ast.Continue,
    # expressions
    ast.BoolOp, ast.NamedExpr, ast.BinOp, ast.UnaryOp, ast.Lambda, ast.IfExp, ast.Dict, ast.Set,
    ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp, ast.Compare, ast.Call,
    ast.FormattedValue, ast.JoinedStr, ast.Constant, ast.Attribute, ast.Subscript, ast.Starred,
    ast.Name, ast.List, ast.Tuple, ast.Slice,
    # the rest
    ast.Load, ast.Store, ast.Del, ast.And, ast.Or,
    ast.Add, ast.Sub, ast.Mult, ast.MatMult, ast.Div, ast.Mod, ast.Pow, ast.LShift, ast.RShift,
    ast.BitOr, ast.BitXor, ast.BitAnd, ast.FloorDiv,
    ast.Invert, ast.Not, ast.UAdd, ast.USub,
    ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Is, ast.IsNot, ast.In, ast.NotIn,
    ast.comprehension, ast.ExceptHandler, ast.arguments, ast.arg, ast.keyword,
})

_NODE_NAMES = {
    "Import": "'import' statement",
    "ImportFrom": "'from ... import' statement",
    "Global": "'global' statement",
    "Nonlocal": "'nonlocal' statement",
    "ClassDef": "class definition",
    "AsyncFunctionDef": "'async def'",
    "AsyncFor": "'async for'",
    "AsyncWith": "'async with'",
    "Await": "'await'",
    "Yield": "'yield'",
    "YieldFrom": "'yield from'",
    "With": "'with' statement",
    "Match": "'match' statement",
    "TryStar": "'except*'",
    "TypeAlias": "'type' statement",
    "TypeVar": "type parameters",
    "ParamSpec": "type parameters",
    "TypeVarTuple": "type parameters",
}


def describe(node: ast.AST) -> str:
    name = type(node).__name__
    return _NODE_NAMES.get(name, f"{name} construct")


def violation(message: str, node: ast.AST | None = None, *, syntax: bool = False) -> SandboxViolation:
    line = getattr(node, "lineno", None)
    col = getattr(node, "col_offset", None)
    text = f"line {line}: {message}" if line else message
    exc = (SandboxSyntaxError if syntax else SandboxViolation)(text)
    exc.lineno = line or 0  # type: ignore[attr-defined]  # SpiffWorkflow compares it with 0
    exc.offset = (col + 1) if col is not None else None  # type: ignore[attr-defined]
    return exc


def check_identifier(name: str, node: ast.AST, what: str) -> None:
    if name.startswith("_") and name != "_":
        kind = "dunder" if name.startswith("__") and name.endswith("__") else "private"
        raise violation(f"{what} '{name}' is not allowed ({kind} names are never accessible)", node)


def _check_format_string(fmt: str, node: ast.AST, depth: int = 0) -> None:
    try:
        fields = list(string.Formatter().parse(fmt))
    except ValueError:
        return  # malformed: fails at run time
    for _literal, field, spec, _conv in fields:
        if field:
            try:
                _first, rest = _string.formatter_field_name_split(field)
                attrs = [key for is_attr, key in rest if is_attr]
            except ValueError:
                attrs = []
            if attrs:
                raise violation(f"attribute access in format string ('{{{field}}}') is not allowed", node)
        if spec and depth < 2:
            _check_format_string(spec, node, depth + 1)


class PolicyChecker(ast.NodeVisitor):
    """Raises on the first construct outside the allowed subset of Python."""

    def generic_visit(self, node: ast.AST) -> None:
        if type(node) not in _ALLOWED_NODES:
            raise violation(f"{describe(node)} is not allowed", node)
        super().generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        check_identifier(node.id, node, "name")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        attr = node.attr
        check_identifier(attr, node, "attribute")
        if not isinstance(node.ctx, ast.Load):
            raise violation(f"assigning or deleting attribute '{attr}' is not allowed", node)
        if attr not in ALLOWED_ATTRIBUTES:
            raise violation(f"attribute '{attr}' is not allowed", node)
        self.visit(node.value)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Name) and func.id in DENIED_CALLS:
            raise violation(f"call to '{func.id}' is not allowed", node)
        if isinstance(func, ast.Attribute) and func.attr in ("format", "format_map"):
            # literal format strings are checked now (the runtime guard checks the others)
            if isinstance(func.value, ast.Constant) and isinstance(func.value.value, str):
                _check_format_string(func.value.value, node)
            elif node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                _check_format_string(node.args[0].value, node)  # str.format('{0.x}', ...)
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, (bytes, bytearray)):
            raise violation("bytes literals are not allowed", node)

    def _check_function(self, node: ast.FunctionDef | ast.Lambda) -> None:
        if isinstance(node, ast.FunctionDef):
            check_identifier(node.name, node, "function name")
            if node.decorator_list:
                raise violation("decorators are not allowed", node.decorator_list[0])
            if getattr(node, "type_params", None):
                raise violation("type parameters are not allowed", node)
            for stmt in node.body:
                self.visit(stmt)
        else:
            self.visit(node.body)
        args = node.args
        for a in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
            if a is not None:
                check_identifier(a.arg, a, "argument")  # annotations are dropped, never evaluated
        for d in [*args.defaults, *args.kw_defaults]:
            if d is not None:
                self.visit(d)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._check_function(node)

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self._check_function(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        # the annotation is dropped (never evaluated); the target and value are checked
        self.visit(node.target)
        if node.value is not None:
            self.visit(node.value)

    def visit_keyword(self, node: ast.keyword) -> None:
        if node.arg is not None:
            check_identifier(node.arg, node, "keyword argument")
        self.visit(node.value)

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.name is not None:
            check_identifier(node.name, node, "name")
        self.generic_visit(node)

    def visit_comprehension(self, node: ast.comprehension) -> None:
        if node.is_async:
            raise violation("'async for' is not allowed", node.target)
        self.generic_visit(node)


def check_tree(tree: ast.AST) -> None:
    """Raise :class:`SandboxViolation` for the first forbidden construct in ``tree``."""
    PolicyChecker().visit(tree)
