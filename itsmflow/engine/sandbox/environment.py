"""SpiffWorkflow integration: a script environment and script engine that run everything sandboxed."""

from __future__ import annotations

import types
from typing import Any, Mapping

from SpiffWorkflow.bpmn.exceptions import WorkflowTaskException
from SpiffWorkflow.bpmn.script_engine.python_engine import PythonScriptEngine
from SpiffWorkflow.bpmn.script_engine.python_environment import BasePythonScriptEngineEnvironment

from ..errors import SandboxViolation
from .data import SCALAR_TYPES, NotData, SandboxAbort, check_data, data_size
from .guards import BOUND_BUILTINS, Budget, static_builtins
from .limits import SandboxLimits
from .transform import FILENAME, CompiledSource, compile_source

_MAX_MESSAGE = 2000
_SIMPLE_ARG_TYPES = (str, int, float, bool, type(None))


def _line_of(tb: types.TracebackType | None) -> int | None:
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == FILENAME:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _violation_from_abort(exc: SandboxAbort) -> SandboxViolation:
    line = _line_of(exc.__traceback__)
    v = SandboxViolation(f"line {line}: {exc.message}" if line else exc.message)
    v.lineno = line  # type: ignore[attr-defined]
    return v


def _short(value: Any, depth: int = 0) -> str:
    if type(value) in _SIMPLE_ARG_TYPES and not (type(value) is int and value.bit_length() > 4000):
        text = value if type(value) is str else repr(value)
    elif isinstance(value, type):  # e.g. decimal signals: Overflow([<class 'decimal.Overflow'>])
        text = value.__name__
    elif type(value) in (list, tuple) and len(value) <= 8 and depth < 2:
        text = "[" + ", ".join(_short(v, depth + 1) for v in value) + "]"
    else:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= _MAX_MESSAGE else text[:_MAX_MESSAGE] + "..."


def _sanitize(exc: BaseException) -> None:
    """Exceptions leaving the sandbox carry only short strings (their args may be huge or
    aliased structures whose str() would blow up in the host)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen and len(seen) < 20:
        seen.add(id(e))
        args = e.args
        if not (len(args) == 1 and type(args[0]) is str and len(args[0]) <= _MAX_MESSAGE):
            try:
                e.args = (", ".join(_short(a) for a in args),) if len(args) != 1 else (_short(args[0]),)
            except Exception:  # pragma: no cover - exotic exception types
                pass
        e = e.__cause__ or e.__context__


_UNSET = object()


class SandboxEnvironment(BasePythonScriptEngineEnvironment):
    """Evaluates expressions and scripts from uploaded BPMN/DMN files in the sandbox.

    ``environment_globals`` are extra functions the *deployer* trusts (not modules); they are
    offered as builtins to every expression.
    """

    def __init__(self, limits: SandboxLimits | None = None, environment_globals: Mapping[str, Any] | None = None):
        super().__init__(dict(environment_globals or {}))
        self.limits = limits or SandboxLimits()
        builtins = static_builtins()
        for name, value in self.globals.items():
            if isinstance(value, types.ModuleType) or name.startswith("_"):
                raise ValueError(f"environment global {name!r} is not allowed (modules and _names never are)")
            builtins[name] = value
        self._builtins = builtins

    # -- SpiffWorkflow API -------------------------------------------------------------------------
    def evaluate(self, expression: str, context: dict, external_context: Mapping[str, Any] | None = None) -> Any:
        compiled = self._compile(expression, "eval")
        return self._run(compiled, context, external_context, write_back=False)

    def execute(self, script: str, context: dict, external_context: Mapping[str, Any] | None = None) -> bool:
        compiled = self._compile(script, "exec")
        self._run(compiled, context, external_context, write_back=True)
        return True

    def call_service(self, context: dict, **kwargs: Any) -> Any:
        raise SandboxViolation("service tasks cannot call services from the script sandbox")

    # -- internals -------------------------------------------------------------------------------
    def _compile(self, source: str, mode: str) -> CompiledSource:
        if not isinstance(source, str):
            raise SandboxViolation(f"expression must be text, not {type(source).__name__}")
        if len(source) > self.limits.max_source_chars:
            raise SandboxViolation(
                f"expression/script is too long (more than {self.limits.max_source_chars} characters)")
        return compile_source(source, mode)

    def _run(self, compiled: CompiledSource, context: dict, external_context: Mapping[str, Any] | None,
             *, write_back: bool) -> Any:
        limits = self.limits
        external = external_context or {}
        budget = Budget(limits, timed=compiled.loops) if compiled.needs_budget else None
        if compiled.bound_builtins:
            builtins = dict(self._builtins)
            for name in compiled.bound_builtins:
                builtins[name] = BOUND_BUILTINS[name](budget)
        else:
            builtins = self._builtins
        g: dict[str, Any] = {"__builtins__": builtins}
        for name, method in compiled.helpers:
            g[name] = getattr(budget, method)

        # task data: only the names the code mentions, and only plain data
        injected: dict[str, Any] = {}
        input_size = 0
        try:
            for name in compiled.names:
                if write_back:  # like SpiffWorkflow: external context wins for scripts, task data for expressions
                    sources = (external, context)
                else:
                    sources = (context, external)
                for src in sources:
                    if name in src:
                        value = src[name]
                        input_size += data_size(value, limits.max_input_bytes, f"variable '{name}'")
                        g[name] = injected[name] = value
                        break
        except NotData as exc:
            raise SandboxViolation(f"{exc.message}; the sandbox only exposes plain data "
                                   "(str, numbers, bool, None, list, dict, tuple, set, Decimal, date/time)") from None
        except SandboxAbort as exc:
            raise SandboxViolation(exc.message) from None

        try:
            try:
                if compiled.mode == "eval":
                    result = eval(compiled.code, g)
                else:
                    exec(compiled.code, g)
                    result = True
            except SandboxAbort:
                raise
            except RecursionError as exc:
                raise SandboxAbort("recursion too deep").with_traceback(exc.__traceback__) from None
            except MemoryError as exc:
                raise SandboxAbort("out of memory").with_traceback(exc.__traceback__) from None
            except Exception as exc:
                _sanitize(exc)
                raise
            if budget is not None and budget.aborted is not None:  # a limit was hit and swallowed
                raise SandboxAbort(budget.aborted)
            budget_after = limits.max_data_bytes + input_size
            depth = limits.max_data_depth
            if write_back:
                self._write_back(g, injected, context, external, budget_after)
            else:
                if compiled.mutates:  # e.g. `items.append(x) or True` changed task data in place
                    total = 0
                    for name, value in injected.items():
                        total += check_data(value, budget_after, f"variable '{name}'", max_depth=depth)
                    if total > budget_after:
                        raise SandboxAbort("expression made the task data too large")
                if type(result) not in SCALAR_TYPES or type(result) is str:
                    data_size(result, budget_after, "expression result", max_depth=depth)
            return result
        except SandboxAbort as exc:
            raise _violation_from_abort(exc).with_traceback(exc.__traceback__) from None

    def _write_back(self, g: dict, injected: dict, context: dict, external: Mapping[str, Any], limit: int) -> None:
        """Copy the script's top-level variables into the task data, after checking them."""
        updates: dict[str, Any] = {}
        removals: list[str] = []
        total = 0
        for name, value in g.items():
            if name.startswith("_"):
                continue  # __builtins__, guard helpers, temporaries
            if name in external:
                continue  # external names (data objects, DMN input) are read-only: assignments are dropped
            if callable(value):  # functions, lambdas, builtins: never task data
                if name in context:
                    removals.append(name)
                continue
            # new values must be storable by the engine; untouched ones only plain data
            storable = injected.get(name, _UNSET) is not value
            total += check_data(value, limit, f"variable '{name}'", storable=storable,
                                max_depth=self.limits.max_data_depth)
            if total > limit:
                raise SandboxAbort("script made the task data too large")
            updates[name] = value
        for name in injected:
            if name not in g and name in context and name not in external:
                removals.append(name)  # `del name`
        for name in removals:
            context.pop(name, None)
        context.update(updates)


class SandboxedScriptEngine(PythonScriptEngine):
    """SpiffWorkflow script engine whose expressions and scripts run in the sandbox."""

    def __init__(self, environment: BasePythonScriptEngineEnvironment | None = None, *,
                 limits: SandboxLimits | None = None) -> None:
        super().__init__(environment=environment or SandboxEnvironment(limits))

    @property
    def limits(self) -> SandboxLimits | None:
        return getattr(self.environment, "limits", None)

    def validate(self, expression: str) -> None:
        """AST check only. Invalid syntax raises a SyntaxError subclass (DMN relies on that)."""
        check_expression(expression, mode="exec")

    def call_service(self, task: Any, **kwargs: Any) -> Any:
        err = SandboxViolation("service tasks cannot call services from the script sandbox")
        raise WorkflowTaskException(str(err), task=task, exception=err)


_DEFAULT_ENVIRONMENT = SandboxEnvironment()


def _environment(limits: SandboxLimits | None) -> SandboxEnvironment:
    return _DEFAULT_ENVIRONMENT if limits is None else SandboxEnvironment(limits)


def evaluate_expression(expr: str, variables: Mapping[str, Any] | None = None,
                        limits: SandboxLimits | None = None) -> Any:
    """Evaluate one expression against ``variables`` (not modified unless the expression mutates
    a container in place)."""
    return _environment(limits).evaluate(expr, dict(variables or {}))


def run_script(script: str, variables: Mapping[str, Any] | None = None,
               limits: SandboxLimits | None = None, functions: Mapping[str, Any] | None = None) -> dict:
    """Run a script against a copy of ``variables`` and return the resulting variables. ``functions`` are
    extra trusted functions offered to the script (as the engine offers ``schedule_entries``)."""
    data = dict(variables or {})
    env = SandboxEnvironment(limits, environment_globals=functions) if functions else _environment(limits)
    env.execute(script, data)
    return data


def check_expression(expr: str, *, mode: str = "auto") -> None:
    """Validate an expression or script without running it (deploy time).

    ``mode``: ``"eval"`` (expression), ``"exec"`` (script) or ``"auto"`` (either; scripts are a
    superset, so this is the exec check). Returns None or raises :class:`SandboxViolation`
    (:class:`SandboxSyntaxError`, also a ``SyntaxError``, for invalid syntax).
    """
    if not isinstance(expr, str):
        raise SandboxViolation(f"expression must be text, not {type(expr).__name__}")
    if len(expr) > SandboxLimits.max_source_chars:
        raise SandboxViolation(f"expression/script is too long (more than {SandboxLimits.max_source_chars} characters)")
    compile_source(expr, "exec" if mode == "auto" else mode)


def check_script(script: str) -> None:
    check_expression(script, mode="exec")
