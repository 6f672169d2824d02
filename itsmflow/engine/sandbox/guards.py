"""Runtime guards: the per-evaluation budget and the checked versions of risky operations.

One :class:`Budget` is created per evaluation (never shared between threads); the code
rewritten by :mod:`.transform` calls its bound methods (``__sb_step``, ``__sb_mul``...), and the
builtins that need it (``str``, ``range``, ``sorted``...) are bound to it as well. Operations
whose result could be huge are checked by predicting the size *before* computing it.
"""

from __future__ import annotations

import os
import string
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from functools import lru_cache
from itertools import chain, islice
from time import monotonic, thread_time
from typing import Any, Callable, NoReturn

import _string

from .data import DECIMAL_MAX_ADJUSTED, SCALAR_TYPES, SandboxAbort, measure
from .limits import SandboxLimits

#: seconds (monotonic clock) between two looks at the CPU clock (~0.7 us) and resident memory (~2 us)
CHECK_PERIOD = 0.005
#: largest exponent / modulus (bits) of a three-argument pow()
MAX_MODPOW_BITS = 4096
#: int() of a Decimal: same limit as Python's int/str conversion
MAX_INT_DIGITS = 4300

_INTS = frozenset({int, bool})
_REPEATABLE = frozenset({str, list, tuple})
_DICT_VIEWS = (type({}.keys()), type({}.values()), type({}.items()))
_SIZED = frozenset({list, tuple, str, dict, set, frozenset, range, *_DICT_VIEWS})
_TEMPORAL = frozenset({datetime, date, time})
_HASHED = frozenset({dict, set, frozenset, str, range, type({}.keys()), type({}.items()), *SCALAR_TYPES})
_SUM_START = frozenset({int, bool, float, Decimal, timedelta, complex})

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss_bytes() -> int | None:
    """Resident memory of the process (Linux: /proc/self/statm; elsewhere the peak RSS)."""
    try:
        fd = os.open("/proc/self/statm", os.O_RDONLY)
        try:
            data = os.read(fd, 128)
        finally:
            os.close(fd)
        return int(data.split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        try:
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        except Exception:  # pragma: no cover - platform without resource
            return None


def _digits_value(text: str) -> int:
    return int(text) if len(text) <= 9 else 10**12


@lru_cache(maxsize=1024)
def _parse_percent(fmt: str) -> tuple[tuple[tuple[str | None, int], ...], bool]:
    """Conversions of a %-format: ((mapping key or None, width + precision), ...), uses '*'."""
    entries: list[tuple[str | None, int]] = []
    star = False
    n = len(fmt)
    i = 0
    while True:
        i = fmt.find("%", i)
        if i < 0 or i + 1 >= n:
            break
        i += 1
        key = None
        if fmt[i] == "(":
            depth, j = 1, i + 1
            while j < n and depth:
                if fmt[j] == "(":
                    depth += 1
                elif fmt[j] == ")":
                    depth -= 1
                j += 1
            key = fmt[i + 1:j - 1]
            i = j
        while i < n and fmt[i] in "-+ #0":
            i += 1
        size = 0
        if i < n and fmt[i] == "*":
            star = True
            i += 1
        else:
            j = i
            while i < n and "0" <= fmt[i] <= "9":
                i += 1
            if i > j:
                size += _digits_value(fmt[j:i])
        if i < n and fmt[i] == ".":
            i += 1
            if i < n and fmt[i] == "*":
                star = True
                i += 1
            else:
                j = i
                while i < n and "0" <= fmt[i] <= "9":
                    i += 1
                if i > j:
                    size += _digits_value(fmt[j:i])
        if i < n and fmt[i] in "hlL":
            i += 1
        if i >= n:
            break
        conv = fmt[i]
        i += 1
        if conv != "%":
            entries.append((key, size))
    return tuple(entries), star


def _print(*args: Any, **kwargs: Any) -> None:
    """print() inside the sandbox: output is discarded."""
    return None


class TypeProxy:
    """Stands in for a builtin type whose constructor is guarded (``str``, ``int``...).

    Calls go to the guarded constructor, ``isinstance(x, proxy)`` works, and public class
    attributes (``str.upper``) are forwarded (the AST policy already limited the names).
    """

    __slots__ = ("_tp", "_ctor")

    def __init__(self, tp: type, ctor: Callable[..., Any]) -> None:
        self._tp = tp
        self._ctor = ctor

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._ctor(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._tp, name)

    def __instancecheck__(self, obj: Any) -> bool:
        return isinstance(obj, self._tp)

    def __repr__(self) -> str:
        return f"<class '{self._tp.__name__}'>"


class SafeFormatter(string.Formatter):
    """``str.format`` / ``format_map`` without attribute access and with size checks."""

    def __init__(self, budget: "Budget") -> None:
        self.budget = budget
        self.total = 0

    def get_field(self, field_name: str, args: Any, kwargs: Any) -> tuple[Any, Any]:
        first, rest = _string.formatter_field_name_split(field_name)
        obj = self.get_value(first, args, kwargs)
        for is_attr, key in rest:
            if is_attr:
                self.budget.fail(f"attribute access in format strings is not allowed ('{{{field_name}}}')")
            obj = obj[key]
        return obj, first

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        b = self.budget
        if conversion is None:
            return value
        if conversion == "s":
            return b.w_str(value)
        if conversion == "r":
            return b.w_repr(value)
        if conversion == "a":
            return b.w_ascii(value)
        raise ValueError(f"Unknown conversion specifier {conversion}")

    def format_field(self, value: Any, format_spec: str) -> str:
        out = self.budget.format_value(value, format_spec)
        self.total += len(out)
        if self.total > self.budget.max_chars:
            self.budget.fail(f"formatted string would be too long (limit {self.budget.max_chars} characters)")
        return out


# attribute name -> (types it is guarded for, Budget method)
_STR_T = frozenset({str})
_LIST_T = frozenset({list})
_SEQ_T = frozenset({list, tuple})
ATTRIBUTE_GUARDS: dict[str, tuple[frozenset[type], str]] = {
    "format": (_STR_T, "g_format"),
    "format_map": (_STR_T, "g_format_map"),
    "join": (_STR_T, "g_join"),
    "replace": (_STR_T, "g_replace"),
    "ljust": (_STR_T, "g_ljust"),
    "rjust": (_STR_T, "g_rjust"),
    "center": (_STR_T, "g_center"),
    "zfill": (_STR_T, "g_zfill"),
    "expandtabs": (_STR_T, "g_expandtabs"),
    "translate": (_STR_T, "g_translate"),
    "strftime": (_TEMPORAL, "g_strftime"),
    "append": (_LIST_T, "g_append"),
    "insert": (_LIST_T, "g_insert"),
    "extend": (_LIST_T, "g_extend"),
    "fromkeys": (frozenset({dict}), "g_fromkeys"),
    "items": (frozenset({dict}), "g_items"),
    "popitem": (frozenset({dict}), "g_popitem"),
    "sort": (_LIST_T, "g_sort"),
    "index": (_SEQ_T, "g_index"),
    "count": (_SEQ_T, "g_count"),
    "remove": (_LIST_T, "g_remove"),
}


class Budget:
    """Counters and guards of ONE evaluation. Not thread-safe by design: never shared."""

    __slots__ = ("limits", "steps", "max_steps", "next_time", "deadline", "depth", "mem_base",
                 "aborted", "max_chars", "max_items", "max_bits")

    def __init__(self, limits: SandboxLimits, *, timed: bool = True) -> None:
        """``timed=False`` (code without loops, calls or comprehensions) skips reading the CPU
        clock up front; the deadline then starts at the first check."""
        self.limits = limits
        self.steps = 0
        self.max_steps = limits.max_steps
        self.next_time = monotonic() + CHECK_PERIOD
        self.deadline: float | None = thread_time() + limits.cpu_seconds if timed else None
        self.depth = 0
        self.mem_base: int | None = None
        self.aborted: str | None = None
        self.max_chars = limits.max_output_chars
        self.max_items = limits.max_output_items
        self.max_bits = limits.max_int_bits

    # -- limits ------------------------------------------------------------------------------
    def fail(self, message: str) -> NoReturn:
        """Abort the evaluation. Sticky: every later guard call fails again."""
        if self.aborted is None:
            self.aborted = message
        self.next_time = float("-inf")
        raise SandboxAbort(message)

    def step(self) -> bool:
        """One loop iteration / comprehension item / call. The cheap monotonic clock is read every
        time (so a step that suddenly costs seconds cannot hide), the CPU clock every CHECK_PERIOD."""
        self.steps += 1
        if monotonic() >= self.next_time or self.steps > self.max_steps:
            self._check()
        return True

    def charge(self, n: int) -> None:
        self.steps += n
        if monotonic() >= self.next_time or self.steps > self.max_steps:
            self._check()

    def _check(self) -> None:
        if self.aborted is not None:
            raise SandboxAbort(self.aborted)
        lim = self.limits
        if self.steps > self.max_steps:
            self.fail(f"step limit exceeded ({lim.max_steps} loop iterations/calls)")
        now = monotonic()
        cpu = thread_time()
        if self.deadline is None:
            self.deadline = cpu + lim.cpu_seconds
        if cpu > self.deadline:
            self.fail(f"CPU time limit exceeded ({lim.cpu_seconds:g} s)")
        if lim.max_memory_bytes is not None:
            rss = _rss_bytes()
            if rss is not None:
                if self.mem_base is None:
                    self.mem_base = rss
                elif rss - self.mem_base > lim.max_memory_bytes:
                    self.fail(f"memory limit exceeded (more than {lim.max_memory_bytes // (1024 * 1024)} MiB)")
        self.next_time = now + CHECK_PERIOD

    def enter(self) -> None:
        """Entry of a user-defined function."""
        self.step()
        depth = self.depth + 1
        if depth > self.limits.max_depth:
            self.fail(f"recursion limit exceeded ({self.limits.max_depth} nested calls)")
        self.depth = depth

    def exit(self) -> None:
        self.depth -= 1

    def lam(self, thunk: Callable[[], Any]) -> Any:
        """Body of a lambda (wrapped in a thunk so that the depth is restored afterwards)."""
        self.enter()
        try:
            return thunk()
        finally:
            self.depth -= 1

    def _chars(self, n: int, what: str) -> None:
        if n > self.max_chars:
            self.fail(f"{what} would be too long ({n} characters, limit {self.max_chars})")

    def _items(self, n: int, what: str) -> None:
        if n > self.max_items:
            self.fail(f"{what} would be too large ({n} elements, limit {self.max_items})")

    def _int_bits(self, n: int, what: str) -> None:
        if n > self.max_bits:
            self.fail(f"{what} would be too large (about {n} bits, limit {self.max_bits})")

    def _materialize(self, it: Any, what: str) -> Any:
        """A sized version of iterable ``it`` with at most max_items elements."""
        if type(it) in _SIZED:
            self._items(len(it), what)
            return it
        out = list(islice(it, self.max_items + 1))
        self._items(len(out), what)
        return out

    def _nodes(self, value: Any, what: str) -> None:
        if type(value) not in SCALAR_TYPES:
            measure(value, self.max_items, "nodes", self, what=what)

    # -- operators ---------------------------------------------------------------------------
    def _repeat(self, seq: Any, n: int) -> None:
        if n > 0:
            if type(seq) is str:
                self._chars(len(seq) * n, "string repetition")
            else:
                self._items(len(seq) * n, "sequence repetition")

    def mul(self, a: Any, b: Any) -> Any:
        ta, tb = type(a), type(b)
        if ta is float or tb is float:
            return a * b
        if ta in _INTS:
            if tb in _INTS:
                self._int_bits(a.bit_length() + b.bit_length(), "product")
            elif tb in _REPEATABLE:
                self._repeat(b, a)
        elif tb in _INTS and ta in _REPEATABLE:
            self._repeat(a, b)
        return a * b

    def pow(self, a: Any, b: Any, mod: Any = None) -> Any:
        if type(a) in _INTS and type(b) in _INTS:
            if mod is None:
                if b > 0 and not -1 <= a <= 1:
                    if b > self.max_bits:
                        self._int_bits(b, "power")
                    self._int_bits(a.bit_length() * b, "power")
            elif type(mod) in _INTS and (b.bit_length() > MAX_MODPOW_BITS or mod.bit_length() > MAX_MODPOW_BITS):
                self.fail(f"numbers too large for pow() with a modulus (limit {MAX_MODPOW_BITS} bits)")
        return pow(a, b) if mod is None else pow(a, b, mod)

    def lshift(self, a: Any, b: Any) -> Any:
        if type(a) in _INTS and type(b) in _INTS and a and b > 0:
            if b > self.max_bits:
                self._int_bits(b, "shift")
            self._int_bits(a.bit_length() + b, "shift")
        return a << b

    def add(self, a: Any, b: Any) -> Any:
        ta = type(a)
        if ta is str:
            if type(b) is str:
                self._chars(len(a) + len(b), "string concatenation")
        elif ta is list or ta is tuple:
            if type(b) is ta:
                self._items(len(a) + len(b), "concatenation")
        return a + b

    def mod(self, a: Any, b: Any) -> Any:
        if type(a) is str:
            return self._percent_format(a, b)
        return a % b

    def aug(self, op: str, a: Any, b: Any) -> Any:
        """Augmented assignment (in place for lists, like Python)."""
        if op == "+":
            if type(a) is list:
                b = self._materialize(b, "list extension")
                self._items(len(a) + len(b), "list extension")
                a += b
                return a
            return self.add(a, b)
        if op == "*":
            if type(a) is list and type(b) in _INTS:
                self._repeat(a, b)
                a *= b
                return a
            return self.mul(a, b)
        if op == "**":
            return self.pow(a, b)
        if op == "<<":
            return self.lshift(a, b)
        if op == "%":
            return self.mod(a, b)
        raise AssertionError(op)  # pragma: no cover

    def cv(self, value: Any) -> Any:
        """Operand of a comparison between two non-constant values."""
        if type(value) not in SCALAR_TYPES:
            measure(value, self.max_items, "nodes", self, what="compared value")
        return value

    def cin(self, container: Any) -> Any:
        """Right operand of ``in``: hashed containers cost one lookup, others a scan."""
        if type(container) not in _HASHED:
            measure(container, self.max_items, "nodes", self, what="searched value")
        return container

    def tup(self, t: tuple) -> tuple:
        """A tuple display/construction: nested tuples are hashed recursively, so cap their size."""
        for e in t:
            if type(e) is tuple and e:
                measure(t, self.max_items, "nodes", self, what="tuple")
                break
        return t

    def varargs(self, t: tuple) -> bool:
        self.tup(t)
        return True

    def setslice(self, obj: Any, value: Any) -> Any:
        """Value of ``obj[a:b] = value`` (``l[len(l):] = l`` doubles a list)."""
        if type(obj) is list:
            value = self._materialize(value, "slice assignment")
            self._items(len(obj) + len(value), "slice assignment")
        return value

    def splat(self, kind: str, *parts: Any) -> Any:
        """``[*a, b]``, ``(*a,)``, ``{*a}`` and ``f(*a)``: size checked before building."""
        mats = [self._materialize(p, "unpacked value") for p in parts]
        self._items(sum(len(m) for m in mats), "unpacking")
        if kind == "list":
            out: list = []
            for m in mats:
                out.extend(m)
            return out
        if kind == "set":
            s: set = set()
            for m in mats:
                s.update(m)
            return s
        t = tuple(chain.from_iterable(mats))
        if kind == "tuple":
            self.tup(t)
        return t

    # -- text ----------------------------------------------------------------------------------
    def _spec_cost(self, spec: str, value: Any) -> None:
        """Refuse format specs (and strftime formats) that produce huge output."""
        if len(spec) > self.max_chars // 32:
            self.fail("format specification is too long")
        total = 0
        j = -1
        n = len(spec)
        for i, ch in enumerate(spec):  # sum of all digit runs: widths, precisions, strftime widths
            if i < j:
                continue
            if "0" <= ch <= "9":
                j = i
                while j < n and "0" <= spec[j] <= "9":
                    j += 1
                total += _digits_value(spec[i:j])
        t = type(value)
        if t in _TEMPORAL:
            total += 32 * len(spec)
        elif t is Decimal and value.is_finite() and spec[-1:] in ("f", "F", "%", ""):
            total += abs(value.adjusted())
        self._chars(total, "formatted value")

    def format_value(self, value: Any, spec: str = "", conversion: int = -1) -> str:
        if conversion == 115:
            value = self.w_str(value)
        elif conversion == 114:
            value = self.w_repr(value)
        elif conversion == 97:
            value = self.w_ascii(value)
        if type(spec) is not str:
            raise TypeError("format spec must be a string")
        if spec:
            self._spec_cost(spec, value)
        if type(value) not in SCALAR_TYPES:
            measure(value, self.max_chars, "chars", self, what="formatted value")
        return format(value, spec)

    def fstr(self, *parts: Any) -> str:
        """An f-string: parts are literal strings or (value, conversion, spec) tuples."""
        out = []
        total = 0
        for p in parts:
            if type(p) is not str:
                p = self.format_value(p[0], p[2], p[1])
            total += len(p)
            if total > self.max_chars:
                self.fail(f"f-string would be too long (limit {self.max_chars} characters)")
            out.append(p)
        return "".join(out)

    def _arg_text_size(self, v: Any) -> int:
        t = type(v)
        if t is str:
            return len(v)
        if t is int or t is bool:
            return 2 + v.bit_length() // 3
        if t is Decimal:
            if v.is_finite() and v.adjusted() > MAX_INT_DIGITS:
                self.fail("Decimal is too large for %-formatting")
            return 48
        if t is float:
            return 330
        if t in SCALAR_TYPES:
            return 48
        return measure(v, self.max_chars, "chars", self, what="formatted value")

    def _percent_format(self, fmt: str, args: Any) -> str:
        entries, star = _parse_percent(fmt)
        if star:
            self.fail("'*' width or precision in %-formatting is not allowed")
        total = len(fmt)
        if any(key is not None for key, _ in entries):
            for key, size in entries:
                total += size
                if key is not None and type(args) is dict and key in args:
                    total += self._arg_text_size(args[key])
        else:
            seq = args if type(args) is tuple else (args,)
            for i, (_, size) in enumerate(entries):
                total += size
                if i < len(seq):
                    total += self._arg_text_size(seq[i])
        self._chars(total, "%-formatted string")
        return fmt % args

    def w_str(self, value: Any = "", *args: Any, **kwargs: Any) -> str:
        if args or kwargs:
            return str(value, *args, **kwargs)
        if type(value) is str:
            return value
        if type(value) not in SCALAR_TYPES:
            measure(value, self.max_chars, "chars", self, what="value converted to text")
        return str(value)

    def w_repr(self, value: Any) -> str:
        if type(value) is str:
            self._chars(len(value) * 4 + 2, "repr()")
        elif type(value) not in SCALAR_TYPES:
            measure(value, self.max_chars, "chars", self, what="value converted to text")
        return repr(value)

    def w_ascii(self, value: Any) -> str:
        if type(value) is str:
            self._chars(len(value) * 10 + 2, "ascii()")
        elif type(value) not in SCALAR_TYPES:
            measure(value, self.max_chars // 10, "chars", self, what="value converted to text")
        return ascii(value)

    def w_format(self, value: Any, spec: str = "") -> str:
        return self.format_value(value, spec)

    # -- guarded attributes (bound in attr()) --------------------------------------------------
    def attr(self, obj: Any, name: str) -> Any:
        """``obj.name`` for the names in ATTRIBUTE_GUARDS."""
        if type(obj) is TypeProxy:
            obj = obj._tp
        guard = ATTRIBUTE_GUARDS.get(name)
        if guard is not None:
            types, meth = guard
            handler = getattr(self, meth)
            if isinstance(obj, type):
                if obj in types:
                    cls = obj
                    if name == "fromkeys":
                        return lambda *a, **k: handler(cls, *a, **k)

                    def unbound(self_: Any, *a: Any, **k: Any) -> Any:
                        if not isinstance(self_, cls):
                            raise TypeError(f"descriptor '{name}' for '{cls.__name__}' objects doesn't apply "
                                            f"to a '{type(self_).__name__}' object")
                        return handler(self_, *a, **k)

                    return unbound
            elif type(obj) in types:
                return lambda *a, **k: handler(obj, *a, **k)
        return getattr(obj, name)

    def g_format(self, s: str, *args: Any, **kwargs: Any) -> str:
        return SafeFormatter(self).vformat(s, args, kwargs)

    def g_format_map(self, s: str, mapping: Any) -> str:
        return SafeFormatter(self).vformat(s, (), mapping)

    def g_join(self, s: str, iterable: Any) -> str:
        items = self._materialize(iterable, "join()")
        total = len(s) * max(len(items) - 1, 0)
        for x in items:
            if type(x) is str:
                total += len(x)
        self._chars(total, "join()")
        return s.join(items)

    def g_replace(self, s: str, old: Any, new: Any, count: Any = -1) -> str:
        if type(old) is str and type(new) is str and type(count) in _INTS:
            n = s.count(old) if old else len(s) + 1
            if count >= 0:
                n = min(n, count)
            self._chars(len(s) + n * (len(new) - len(old)), "replace()")
        return s.replace(old, new, count)

    def _pad(self, width: Any, what: str) -> None:
        if type(width) in _INTS:
            self._chars(width, what)

    def g_ljust(self, s: str, width: Any, *args: Any) -> str:
        self._pad(width, "ljust()")
        return s.ljust(width, *args)

    def g_rjust(self, s: str, width: Any, *args: Any) -> str:
        self._pad(width, "rjust()")
        return s.rjust(width, *args)

    def g_center(self, s: str, width: Any, *args: Any) -> str:
        self._pad(width, "center()")
        return s.center(width, *args)

    def g_zfill(self, s: str, width: Any) -> str:
        self._pad(width, "zfill()")
        return s.zfill(width)

    def g_expandtabs(self, s: str, tabsize: Any = 8) -> str:
        if type(tabsize) in _INTS:
            self._chars(len(s) + s.count("\t") * max(tabsize, 0), "expandtabs()")
        return s.expandtabs(tabsize)

    def g_translate(self, s: str, table: Any) -> str:
        longest = 1
        values = table.values() if type(table) is dict else table if type(table) in (list, tuple) else ()
        for v in values:
            if type(v) is str and len(v) > longest:
                longest = len(v)
        self._chars(len(s) * longest, "translate()")
        return s.translate(table)

    def g_strftime(self, d: Any, fmt: Any) -> str:
        if type(fmt) is str:
            self._spec_cost(fmt, d)
        return d.strftime(fmt)

    def g_append(self, lst: list, value: Any) -> None:
        self._items(len(lst) + 1, "list")
        self.step()
        lst.append(value)

    def g_insert(self, lst: list, index: Any, value: Any) -> None:
        self._items(len(lst) + 1, "list")
        self.step()
        lst.insert(index, value)

    def g_extend(self, lst: list, iterable: Any) -> None:
        iterable = self._materialize(iterable, "list extension")
        self._items(len(lst) + len(iterable), "list extension")
        lst.extend(iterable)

    def g_fromkeys(self, obj: Any, iterable: Any, value: Any = None) -> dict:
        cls = obj if isinstance(obj, type) else type(obj)
        return cls.fromkeys(self._materialize(iterable, "fromkeys()"), value)

    def g_items(self, d: dict) -> Any:
        # (key, value) pairs are new tuples: bound what hashing them could cost
        measure(d, self.max_items, "nodes", self, what="dict")
        return d.items()

    def g_popitem(self, d: dict) -> tuple:
        return self.tup(d.popitem())

    def g_sort(self, lst: list, *, key: Any = None, reverse: bool = False) -> None:
        self._nodes(lst, "sorted list")
        lst.sort(key=key, reverse=reverse)

    def g_index(self, seq: Any, value: Any, *args: Any) -> int:
        self._nodes(seq, "searched sequence")
        self._nodes(value, "searched value")
        return seq.index(value, *args)

    def g_count(self, seq: Any, value: Any) -> int:
        self._nodes(seq, "searched sequence")
        self._nodes(value, "searched value")
        return seq.count(value)

    def g_remove(self, lst: list, value: Any) -> None:
        self._nodes(lst, "searched sequence")
        self._nodes(value, "searched value")
        lst.remove(value)

    # -- guarded builtins ------------------------------------------------------------------------
    def w_tuple(self, iterable: Any = ()) -> tuple:
        if type(iterable) is tuple:
            return iterable
        return self.tup(tuple(self._materialize(iterable, "tuple()")))

    def w_int(self, value: Any = 0, *args: Any, **kwargs: Any) -> int:
        if type(value) is Decimal and value.is_finite() and value.adjusted() > MAX_INT_DIGITS:
            self.fail(f"int() of a Decimal with more than {MAX_INT_DIGITS} digits is not allowed")
        return int(value, *args, **kwargs)

    def w_decimal(self, value: Any = "0", *args: Any, **kwargs: Any) -> Decimal:
        d = Decimal(value, *args, **kwargs)
        if d.is_finite() and abs(d.adjusted()) > DECIMAL_MAX_ADJUSTED:
            self.fail("Decimal exponent out of range")
        return d

    def w_range(self, *args: Any) -> range:
        r = range(*args)
        try:
            n = len(r)
        except OverflowError:
            n = self.limits.max_range + 1
        if n > self.limits.max_range:
            self.fail(f"range() too large ({self.limits.max_range} elements at most)")
        return r

    def w_sorted(self, iterable: Any, *, key: Any = None, reverse: bool = False) -> list:
        items = self._materialize(iterable, "sorted()")
        self._nodes(items, "sorted values")
        return sorted(items, key=key, reverse=reverse)

    def w_min(self, *args: Any, **kwargs: Any) -> Any:
        items = self._materialize(args[0], "min()") if len(args) == 1 else args
        self._nodes(items, "compared values")
        return min(items, **kwargs)

    def w_max(self, *args: Any, **kwargs: Any) -> Any:
        items = self._materialize(args[0], "max()") if len(args) == 1 else args
        self._nodes(items, "compared values")
        return max(items, **kwargs)

    def w_sum(self, iterable: Any, start: Any = 0) -> Any:
        if type(start) not in _SUM_START:
            self.fail("sum() only adds numbers (and timedelta); use join() or a loop for other values")
        return sum(iterable, start)

    def w_round(self, number: Any, ndigits: Any = None) -> Any:
        t = type(number)
        if ndigits is None:
            if t is Decimal and number.is_finite() and number.adjusted() > MAX_INT_DIGITS:
                self.fail(f"round() of a Decimal with more than {MAX_INT_DIGITS} digits is not allowed")
            return round(number)
        if t in _INTS and type(ndigits) in _INTS and ndigits < -(number.bit_length() // 3 + 2):
            return 0  # what round() returns, without computing 10 ** -ndigits
        return round(number, ndigits)

    def w_zip(self, *iterables: Any, **kwargs: Any) -> Any:
        for t in zip(*iterables, **kwargs):
            self.step()
            self.tup(t)
            yield t


#: builtins that are bound to the evaluation's Budget (name -> factory)
BOUND_BUILTINS: dict[str, Callable[[Budget], Any]] = {
    "str": lambda b: TypeProxy(str, b.w_str),
    "tuple": lambda b: TypeProxy(tuple, b.w_tuple),
    "int": lambda b: TypeProxy(int, b.w_int),
    "Decimal": lambda b: TypeProxy(Decimal, b.w_decimal),
    "repr": lambda b: b.w_repr,
    "ascii": lambda b: b.w_ascii,
    "format": lambda b: b.w_format,
    "range": lambda b: b.w_range,
    "sorted": lambda b: b.w_sorted,
    "min": lambda b: b.w_min,
    "max": lambda b: b.w_max,
    "sum": lambda b: b.w_sum,
    "pow": lambda b: b.pow,
    "round": lambda b: b.w_round,
    "zip": lambda b: b.w_zip,
}

#: exceptions sandboxed code may raise and catch
EXPOSED_EXCEPTIONS = (
    Exception, ValueError, TypeError, KeyError, IndexError, LookupError, ArithmeticError,
    ZeroDivisionError, OverflowError, AttributeError, NameError, RuntimeError, AssertionError,
    NotImplementedError,
)


def static_builtins() -> dict[str, Any]:
    """Builtins that need no budget (C functions and immutable classes only; no modules)."""
    b: dict[str, Any] = {
        "abs": abs, "all": all, "any": any, "bool": bool, "chr": chr, "dict": dict, "divmod": divmod,
        "enumerate": enumerate, "filter": filter, "float": float, "isinstance": isinstance, "len": len,
        "list": list, "map": map, "ord": ord, "reversed": reversed, "set": set,
        "datetime": datetime, "date": date, "timedelta": timedelta, "timezone": timezone,
        "print": _print,
        # used by rewritten code
        "__sb_Exception": Exception,
        "__sb_slice": slice,
    }
    for exc in EXPOSED_EXCEPTIONS:
        b[exc.__name__] = exc
    return b


#: helper names used by rewritten code -> Budget method
HELPER_METHODS: dict[str, str] = {
    "__sb_step": "step",
    "__sb_enter": "enter",
    "__sb_exit": "exit",
    "__sb_mul": "mul",
    "__sb_pow": "pow",
    "__sb_lshift": "lshift",
    "__sb_add": "add",
    "__sb_mod": "mod",
    "__sb_aug": "aug",
    "__sb_cv": "cv",
    "__sb_cin": "cin",
    "__sb_lam": "lam",
    "__sb_tup": "tup",
    "__sb_varargs": "varargs",
    "__sb_splat": "splat",
    "__sb_setslice": "setslice",
    "__sb_fstr": "fstr",
    "__sb_attr": "attr",
}
