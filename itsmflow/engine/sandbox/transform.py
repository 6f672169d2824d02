"""Source -> checked, guard-instrumented code object (cached per source string).

After the policy check, the AST is rewritten so that

* every loop iteration, comprehension item and lambda call counts a step, and every
  ``def`` counts a step and its nesting depth (``__sb_step``, ``__sb_enter``/``__sb_exit``);
* ``*``, ``**``, ``<<``, ``%`` and ``+`` whose result could be huge go through size checks;
* f-strings, risky attributes (``str.format``, ``join``, ``list.append``...), comparisons of
  two non-constant values, tuple displays and ``*``-unpacking go through guards;
* bare ``except:`` becomes ``except Exception:`` (limits raise a BaseException).
"""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass
from functools import lru_cache
from types import CodeType

from .guards import BOUND_BUILTINS, HELPER_METHODS
from .policy import GUARDED_ATTRIBUTES, MUTATING_ATTRIBUTES, SandboxSyntaxError, check_tree, violation

FILENAME = "<string>"  # SpiffWorkflow looks for this name in tracebacks to find the line

_BINOP_HELPERS = {ast.Mult: "__sb_mul", ast.Pow: "__sb_pow", ast.LShift: "__sb_lshift", ast.Mod: "__sb_mod",
                  ast.Add: "__sb_add"}
_AUG_OPS = {ast.Add: "+", ast.Mult: "*", ast.Pow: "**", ast.LShift: "<<", ast.Mod: "%"}
_SCALAR_CONSTANTS = (int, float, complex, str, bool, type(None))


@dataclass(frozen=True, slots=True)
class CompiledSource:
    code: CodeType
    mode: str
    #: every name the code mentions (the only task data it can see)
    names: tuple[str, ...]
    #: (global name, Budget method) of the guard helpers the code calls
    helpers: tuple[tuple[str, str], ...]
    #: builtins it uses that are bound to the budget
    bound_builtins: tuple[str, ...]
    #: it calls methods that mutate their object (data must be re-checked afterwards)
    mutates: bool

    @property
    def needs_budget(self) -> bool:
        return bool(self.helpers or self.bound_builtins)

    @property
    def loops(self) -> bool:
        """Has loops, comprehensions or functions (can run for long)."""
        return any(name in ("__sb_step", "__sb_enter", "__sb_lam") for name, _ in self.helpers)


def _is_number_constant(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) in (int, float, complex, bool)


def _is_scalarish(node: ast.AST) -> bool:
    """A literal scalar, or a literal tuple/list/set of them: comparing with it is cheap."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, _SCALAR_CONSTANTS)
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return all(isinstance(e, ast.Constant) and isinstance(e.value, _SCALAR_CONSTANTS) for e in node.elts)
    return False


def _has_slice(node: ast.AST) -> bool:
    if isinstance(node, ast.Tuple):
        return any(isinstance(e, ast.Slice) for e in node.elts)
    return isinstance(node, ast.Slice)


def _constant_like(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return True
    return isinstance(node, ast.Tuple) and all(_constant_like(e) for e in node.elts)


class GuardTransformer(ast.NodeTransformer):
    def __init__(self) -> None:
        self.helpers: set[str] = set()
        self.mutates = False
        self._tmp = 0

    # -- helpers -------------------------------------------------------------------------------
    def _name(self, name: str) -> ast.Name:
        if name in HELPER_METHODS:
            self.helpers.add(name)
        return ast.Name(id=name, ctx=ast.Load())

    def _call(self, helper: str, *args: ast.expr) -> ast.Call:
        return ast.Call(func=self._name(helper), args=list(args), keywords=[])

    def _step(self) -> ast.Call:
        return self._call("__sb_step")

    def _temp(self) -> str:
        self._tmp += 1
        return f"__sb_t{self._tmp}"

    def _splat(self, kind: str, elts: list[ast.expr]) -> ast.Call:
        chunks: list[ast.expr] = []
        group: list[ast.expr] = []
        for e in elts:
            if isinstance(e, ast.Starred):
                if group:
                    chunks.append(ast.Tuple(elts=group, ctx=ast.Load()))
                    group = []
                chunks.append(e.value)
            else:
                group.append(e)
        if group:
            chunks.append(ast.Tuple(elts=group, ctx=ast.Load()))
        return self._call("__sb_splat", ast.Constant(kind), *chunks)

    @staticmethod
    def _strip_annotations(args: ast.arguments) -> None:
        for a in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
            if a is not None:
                a.annotation = None

    # -- loops, functions ----------------------------------------------------------------------
    def visit_For(self, node: ast.For) -> ast.AST:
        self.generic_visit(node)
        node.body.insert(0, ast.Expr(self._step()))
        return node

    visit_While = visit_For

    def _comprehension(self, node: ast.AST) -> ast.AST:
        self.generic_visit(node)
        for gen in node.generators:  # type: ignore[attr-defined]
            gen.ifs.insert(0, self._step())
        return node

    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _comprehension

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        node.decorator_list = []
        node.returns = None
        self._strip_annotations(node.args)
        self.generic_visit(node)
        body: list[ast.stmt] = []
        if node.args.vararg is not None:
            body.append(ast.Expr(self._call("__sb_varargs", ast.Name(id=node.args.vararg.arg, ctx=ast.Load()))))
        body.extend(node.body)
        node.body = [
            ast.Expr(self._call("__sb_enter")),
            ast.Try(body=body, handlers=[], orelse=[], finalbody=[ast.Expr(self._call("__sb_exit"))]),
        ]
        return node

    def visit_Lambda(self, node: ast.Lambda) -> ast.AST:
        self._strip_annotations(node.args)
        self.generic_visit(node)
        body = node.body
        if node.args.vararg is not None:
            check = self._call("__sb_varargs", ast.Name(id=node.args.vararg.arg, ctx=ast.Load()))
            body = ast.BoolOp(op=ast.And(), values=[check, body])
        # `lambda x: body` -> `lambda x: __sb_lam(lambda: body)`: counted like a def call
        thunk = ast.Lambda(args=ast.arguments(posonlyargs=[], args=[], vararg=None, kwonlyargs=[], kw_defaults=[],
                                              kwarg=None, defaults=[]), body=body)
        node.body = self._call("__sb_lam", thunk)
        return node

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> ast.AST:
        self.generic_visit(node)
        if node.type is None:
            node.type = self._name("__sb_Exception")
        return node

    def visit_Assign(self, node: ast.Assign) -> ast.AST | list[ast.AST]:
        target = node.targets[0]
        if len(node.targets) == 1 and isinstance(target, ast.Subscript) and isinstance(target.slice, ast.Slice):
            # x[a:b] = v  ->  t2 = v; t1 = x; t1[a:b] = __sb_setslice(t1, t2)   (same evaluation order)
            value = self.visit(node.value)
            obj = self.visit(target.value)
            index = self.visit(target.slice)
            t1, t2 = self._temp(), self._temp()
            stmts = [
                ast.Assign(targets=[ast.Name(id=t2, ctx=ast.Store())], value=value),
                ast.Assign(targets=[ast.Name(id=t1, ctx=ast.Store())], value=obj),
                ast.Assign(targets=[ast.Subscript(value=ast.Name(id=t1, ctx=ast.Load()), slice=index, ctx=ast.Store())],
                           value=self._call("__sb_setslice", ast.Name(id=t1, ctx=ast.Load()),
                                            ast.Name(id=t2, ctx=ast.Load()))),
            ]
            return [ast.copy_location(s, node) for s in stmts]
        return self.generic_visit(node)

    def visit_Subscript(self, node: ast.Subscript) -> ast.AST:
        if isinstance(node.ctx, ast.Store) and _has_slice(node.slice):
            raise violation("assigning to a slice is only supported as a plain `x[a:b] = value` statement", node)
        return self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.AST:
        if node.value is None:
            return ast.copy_location(ast.Pass(), node)
        return self.visit(ast.copy_location(ast.Assign(targets=[node.target], value=node.value), node))

    # -- operators -----------------------------------------------------------------------------
    @staticmethod
    def _binop_is_safe(op: ast.operator, left: ast.expr, right: ast.expr) -> bool:
        if isinstance(op, ast.Add):  # growth per operation is bounded by a literal
            return any(_is_number_constant(x) or (isinstance(x, ast.Constant) and isinstance(x.value, str)
                                                  and len(x.value) <= 256) for x in (left, right))
        if isinstance(op, ast.Mult):
            return (any(isinstance(x, ast.Constant) and type(x.value) is float for x in (left, right))
                    or (_is_number_constant(left) and _is_number_constant(right)))
        if isinstance(op, ast.Pow):
            if isinstance(left, ast.Constant) and type(left.value) is float:
                return True
            return (_is_number_constant(left) and _is_number_constant(right) and type(right.value) is int
                    and type(left.value) is int and left.value.bit_length() <= 64 and right.value <= 64)
        if isinstance(op, ast.LShift):
            return (_is_number_constant(left) and isinstance(right, ast.Constant) and type(right.value) is int
                    and right.value <= 64)
        if isinstance(op, ast.Mod):
            return _is_number_constant(left)
        return True

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        safe = self._binop_is_safe(node.op, node.left, node.right)
        self.generic_visit(node)
        helper = _BINOP_HELPERS.get(type(node.op))
        if helper is None or safe:
            return node
        return ast.copy_location(self._call(helper, node.left, node.right), node)

    def visit_AugAssign(self, node: ast.AugAssign) -> ast.AST | list[ast.AST]:
        op = _AUG_OPS.get(type(node.op))
        safe = op is None or (op in ("+", "<<") and self._binop_is_safe(node.op, node.target, node.value))
        target = node.target
        node.value = self.visit(node.value)
        if isinstance(target, ast.Subscript):  # visited by parts: a slice target is fine here
            target.value = self.visit(target.value)
            target.slice = self.visit(target.slice)
            if safe and isinstance(target.slice, ast.Slice) and isinstance(target.value, ast.Name):
                safe = False  # `l[a:b] += l` grows a list: go through __sb_aug
        else:
            node.target = target = self.visit(target)
        if safe:
            return node
        if isinstance(target, ast.Name):
            load = ast.Name(id=target.id, ctx=ast.Load())
            new = ast.Assign(targets=[target], value=self._call("__sb_aug", ast.Constant(op), load, node.value))
            return ast.copy_location(new, node)
        if isinstance(target, ast.Subscript):
            obj, idx = self._temp(), self._temp()
            index = target.slice
            if isinstance(index, ast.Slice):
                index = self._call("__sb_slice", *(x if x is not None else ast.Constant(None)
                                                   for x in (index.lower, index.upper, index.step)))
            elif isinstance(index, ast.Tuple) and any(isinstance(e, ast.Slice) for e in index.elts):
                raise violation("augmented assignment to an extended slice is not supported", node)
            stmts = [
                ast.Assign(targets=[ast.Name(id=obj, ctx=ast.Store())], value=target.value),
                ast.Assign(targets=[ast.Name(id=idx, ctx=ast.Store())], value=index),
                ast.Assign(
                    targets=[ast.Subscript(value=ast.Name(id=obj, ctx=ast.Load()),
                                           slice=ast.Name(id=idx, ctx=ast.Load()), ctx=ast.Store())],
                    value=self._call("__sb_aug", ast.Constant(op),
                                     ast.Subscript(value=ast.Name(id=obj, ctx=ast.Load()),
                                                   slice=ast.Name(id=idx, ctx=ast.Load()), ctx=ast.Load()),
                                     node.value),
                ),
            ]
            return [ast.copy_location(s, node) for s in stmts]
        raise violation("augmented assignment to this target is not supported", node)

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        operands = [node.left, *node.comparators]
        wrap: dict[int, str] = {}
        for i, op in enumerate(node.ops):
            left, right = operands[i], operands[i + 1]
            if isinstance(op, (ast.Is, ast.IsNot)):
                continue
            if isinstance(op, (ast.In, ast.NotIn)):
                # `scalar in container` costs len(container) comparisons or one hash: fine
                if not _is_scalarish(left):
                    wrap[i] = "__sb_cv"
                    if not _is_scalarish(right):
                        wrap.setdefault(i + 1, "__sb_cin")  # __sb_cv wins if both apply
            elif not (_is_scalarish(left) or _is_scalarish(right)):
                wrap[i] = wrap[i + 1] = "__sb_cv"
        self.generic_visit(node)
        operands = [node.left, *node.comparators]
        for i, helper in wrap.items():
            operands[i] = self._call(helper, operands[i])
        node.left, node.comparators = operands[0], operands[1:]
        return node

    # -- displays, calls, attributes, f-strings ---------------------------------------------------
    def visit_Tuple(self, node: ast.Tuple) -> ast.AST:
        self.generic_visit(node)
        if not isinstance(node.ctx, ast.Load):
            return node
        if any(isinstance(e, ast.Starred) for e in node.elts):
            return ast.copy_location(self._splat("tuple", node.elts), node)
        if all(_constant_like(e) for e in node.elts):
            return node
        return ast.copy_location(self._call("__sb_tup", node), node)

    def visit_List(self, node: ast.List) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.ctx, ast.Load) and any(isinstance(e, ast.Starred) for e in node.elts):
            return ast.copy_location(self._splat("list", node.elts), node)
        return node

    def visit_Set(self, node: ast.Set) -> ast.AST:
        self.generic_visit(node)
        if any(isinstance(e, ast.Starred) for e in node.elts):
            return ast.copy_location(self._splat("set", node.elts), node)
        return node

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        if any(isinstance(a, ast.Starred) for a in node.args):
            node.args = [ast.Starred(value=self._splat("args", node.args), ctx=ast.Load())]
        return node

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        self.generic_visit(node)
        if node.attr in MUTATING_ATTRIBUTES:
            self.mutates = True
        if isinstance(node.ctx, ast.Load) and node.attr in GUARDED_ATTRIBUTES:
            return ast.copy_location(self._call("__sb_attr", node.value, ast.Constant(node.attr)), node)
        return node

    def visit_JoinedStr(self, node: ast.JoinedStr) -> ast.AST:
        parts: list[ast.expr] = []
        for v in node.values:
            if isinstance(v, ast.FormattedValue):
                value = self.visit(v.value)
                spec = self.visit(v.format_spec) if v.format_spec is not None else ast.Constant("")
                parts.append(ast.Tuple(elts=[value, ast.Constant(v.conversion), spec], ctx=ast.Load()))
            else:
                parts.append(v)
        return ast.copy_location(self._call("__sb_fstr", *parts), node)


def normalize_source(source: str, mode: str) -> str:
    """Expressions from XML often carry indentation and line breaks around them."""
    if mode == "eval":
        return source.strip()
    return textwrap.dedent(source)


#: sources up to this length are cached (bounds the cache's memory: 4096 entries)
CACHEABLE_CHARS = 8192


def compile_source(source: str, mode: str) -> CompiledSource:
    """Parse, check and instrument ``source`` (``mode`` is ``"eval"`` or ``"exec"``); cached.

    Raises :class:`SandboxViolation` (a :class:`SandboxSyntaxError` for invalid syntax).
    """
    if mode not in ("eval", "exec"):
        raise ValueError(f"mode must be 'eval' or 'exec', not {mode!r}")
    if len(source) <= CACHEABLE_CHARS:
        return _compile_cached(source, mode)
    return _compile(source, mode)


def _compile(source: str, mode: str) -> CompiledSource:
    text = normalize_source(source, mode)
    try:
        tree = ast.parse(text, filename=FILENAME, mode=mode)
        check_tree(tree)
        names = tuple(sorted({n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and not n.id.startswith("_")}))
        transformer = GuardTransformer()
        tree = ast.fix_missing_locations(transformer.visit(tree))
        code = compile(tree, FILENAME, mode, dont_inherit=True)
    except SyntaxError as exc:
        if isinstance(exc, SandboxSyntaxError):
            raise
        node = ast.AST()
        node.lineno, node.col_offset = exc.lineno or 0, max((exc.offset or 1) - 1, 0)  # type: ignore[attr-defined]
        msg = exc.msg if exc.msg.startswith("invalid syntax") else f"invalid syntax: {exc.msg}"
        raise violation(msg, node if exc.lineno else None, syntax=True) from None
    except (RecursionError, MemoryError):
        raise violation("expression is too deeply nested or too complex") from None
    except ValueError as exc:  # e.g. NUL bytes in the source
        raise violation(f"invalid source: {exc}") from None
    return CompiledSource(
        code=code,
        mode=mode,
        names=names,
        helpers=tuple(sorted((h, HELPER_METHODS[h]) for h in transformer.helpers)),
        bound_builtins=tuple(n for n in names if n in BOUND_BUILTINS),
        mutates=transformer.mutates,
    )


_compile_cached = lru_cache(maxsize=4096)(_compile)
