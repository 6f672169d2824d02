"""Walking values: type validation (what may enter or leave the sandbox) and size estimates.

All walks are iterative (deeply nested data cannot overflow the C stack) and stop as soon as
the running total passes the limit, so a cyclic or massively aliased structure (``[x] * n``
nested a few times) costs at most ``limit`` steps.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:  # pragma: no cover
    from .guards import Budget


class SandboxAbort(BaseException):
    """Raised inside the sandbox when a limit is hit or an operation is refused.

    Derives from ``BaseException`` so ``except Exception`` in sandboxed code cannot catch it
    (bare ``except:`` is rewritten to ``except Exception:``). The environment turns it into
    :class:`SandboxViolation` at the boundary.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotData(SandboxAbort):
    """A value that is not plain data (function, generator, foreign object...)."""


def abort(message: str) -> NoReturn:
    raise SandboxAbort(message)


NONE_TYPE = type(None)
#: immutable values that may be data
SCALAR_TYPES = frozenset({NONE_TYPE, bool, int, float, str, Decimal, datetime, date, time, timedelta})
#: what a dict key in task data may be
KEY_TYPES = frozenset({str, int, float, bool, NONE_TYPE, Decimal, datetime, date, time, timedelta, tuple})
_DICT_VIEWS = (type({}.keys()), type({}.values()), type({}.items()))
_TEMPORAL = (datetime, date, time, timedelta)
_FLAT_NUMBERS = frozenset({float, bool, NONE_TYPE})  # ints are excluded: their size varies
_ONLY_STR = frozenset({str})
_INT_LIKE = frozenset({int, bool})

#: Decimal exponents outside this range cannot come from arithmetic (default context)
DECIMAL_MAX_ADJUSTED = 999_999


def _type_name(value: Any) -> str:
    return type(value).__name__


def measure(value: Any, limit: int, mode: str, budget: "Budget | None" = None, *, what: str = "value") -> int:
    """Approximate size of any value, counting shared parts each time; aborts above ``limit``.

    ``mode``:
      * ``"nodes"`` - number of objects visited (cost of comparing, hashing, sorting)
      * ``"chars"`` - length of ``repr()`` (cost of converting to text)
    """
    nodes_mode = mode == "nodes"
    size = 0
    visited = 0
    stack = [value]
    pop = stack.pop
    push = stack.extend
    while stack:
        o = pop()
        t = type(o)
        visited += 1
        if t is str:
            size += 1 if nodes_mode else len(o) + 2
        elif t is int or t is bool:
            size += 1 if nodes_mode else 2 + o.bit_length() // 3
        elif t is float or t is NONE_TYPE or t is Decimal or t in _TEMPORAL:
            size += 1 if nodes_mode else 32
        elif t is list or t is tuple or t is set or t is frozenset or t in _DICT_VIEWS:
            n = len(o)
            size += n + 2
            if size > limit:
                break
            if n > 8:  # flat collections of scalars are common: size them at C speed
                kinds = set(map(type, o))
                if nodes_mode and kinds <= SCALAR_TYPES:
                    continue
                if kinds <= _INT_LIKE:
                    size += sum(map(int.bit_length, o)) // 3 + 2 * n
                    continue
                if kinds <= _FLAT_NUMBERS:
                    size += 23 * n
                    continue
                if kinds == _ONLY_STR:
                    size += sum(map(len, o)) + 2 * n
                    continue
            push(o)
        elif t is dict:
            n = len(o)
            size += (n + 1) if nodes_mode else (4 * n + 2)
            if size > limit:
                break
            push(o.keys())
            if n > 8 and nodes_mode and set(map(type, o.values())) <= SCALAR_TYPES:
                continue
            push(o.values())
        elif isinstance(o, BaseException):
            size += 16
            push(o.args)
        else:  # functions, generators, ranges, ...: short repr, not traversed by comparisons
            size += 1 if nodes_mode else 64
        if size > limit:
            break
        if budget is not None and not visited & 1023:
            budget.charge(32)
    if size > limit:
        unit = "elements" if nodes_mode else "characters"
        message = f"{what} is too large (more than {limit} {unit}, counting shared parts each time)"
        if budget is not None:
            budget.fail(message)  # sticky
        abort(message)
    return size


#: what the engine can store (see itsmflow.engine.variables)
STORABLE_SCALARS = frozenset({NONE_TYPE, bool, int, float, str, Decimal, datetime, date, timedelta})
_STR_KEYS = frozenset({str})
MAX_INT_BITS_IN_DATA = 1_000_000


def check_data(value: Any, limit: int, what: str, *, storable: bool = False, max_depth: int | None = None) -> int:
    """Validate that ``value`` is plain data and return its approximate JSON size (shared parts
    counted each time, as JSON would). Aborts above ``limit``.

    ``storable`` restricts to what the engine persists (no set/time, string keys only);
    ``max_depth`` caps the nesting of containers.
    """
    scalars = STORABLE_SCALARS if storable else SCALAR_TYPES
    key_types = _STR_KEYS if storable else KEY_TYPES
    size = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    pop = stack.pop
    while stack:
        o, depth = pop()
        t = type(o)
        if t is str:
            size += len(o) + 2
        elif t is int or t is bool:
            bits = o.bit_length()
            if bits > MAX_INT_BITS_IN_DATA:
                raise NotData(f"{what} holds an integer that is too large")
            size += 2 + bits // 3
        elif t is float or t is NONE_TYPE:
            size += 24
        elif t is Decimal:
            if o.is_finite() and abs(o.adjusted()) > DECIMAL_MAX_ADJUSTED:
                raise NotData(f"{what} holds a Decimal with an out-of-range exponent")
            size += 40
        elif t in scalars:
            size += 32
        elif t is list or t is tuple or (t is set and not storable):
            if max_depth is not None and depth >= max_depth:
                raise NotData(f"{what} is nested deeper than {max_depth} levels")
            n = len(o)
            size += n + 2
            if size > limit:
                break
            if n > 8:
                kinds = set(map(type, o))
                if kinds <= _INT_LIKE:
                    bits = sum(map(int.bit_length, o))
                    if bits <= MAX_INT_BITS_IN_DATA:
                        size += bits // 3 + 2 * n
                        continue
                elif kinds <= _FLAT_NUMBERS:
                    size += 23 * n
                    continue
                elif kinds == _ONLY_STR:
                    size += sum(map(len, o)) + 2 * n
                    continue
            depth += 1
            stack.extend([(c, depth) for c in o])
        elif t is dict:
            if max_depth is not None and depth >= max_depth:
                raise NotData(f"{what} is nested deeper than {max_depth} levels")
            n = len(o)
            size += 4 * n + 2
            if size > limit:
                break
            depth += 1
            if set(map(type, o)) <= _STR_KEYS:
                size += sum(map(len, o))
            else:
                for k in o:
                    if type(k) not in key_types:
                        raise NotData(f"{what} holds a dict key of type {_type_name(k)}"
                                      + (" (keys must be strings)" if storable else ""))
                stack.extend([(k, depth) for k in o])
            stack.extend([(v, depth) for v in o.values()])
        else:
            hint = " (use a list)" if t is set else ""
            raise NotData(f"{what} holds a value of type {_type_name(o)}, which is not plain data{hint}")
        if size > limit:
            break
    if size > limit:
        abort(f"{what} is too large (more than {limit} bytes, counting shared parts each time)")
    return size


def data_size(value: Any, limit: int, what: str, *, storable: bool = False, max_depth: int | None = None) -> int:
    """:func:`check_data` with a fast path for scalars."""
    t = type(value)
    if t is str:
        n = len(value) + 2
    elif t is bool or t is NONE_TYPE or t is float:
        n = 8
    elif t is int and value.bit_length() <= MAX_INT_BITS_IN_DATA:
        n = 2 + value.bit_length() // 3
    else:
        return check_data(value, limit, what, storable=storable, max_depth=max_depth)
    if n > limit:
        abort(f"{what} is too large (more than {limit} bytes)")
    return n
