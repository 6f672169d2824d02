"""The expression/script sandbox: escapes, resource limits, SpiffWorkflow integration."""

from __future__ import annotations

import os
import random
import threading
import time
from datetime import date, datetime, timedelta
from decimal import Decimal

import pytest
from SpiffWorkflow.bpmn import BpmnWorkflow
from SpiffWorkflow.bpmn.exceptions import WorkflowTaskException
from SpiffWorkflow.camunda.parser import CamundaParser

from itsmflow.engine.errors import SandboxViolation
from itsmflow.engine.sandbox import (
    SandboxedScriptEngine,
    SandboxEnvironment,
    SandboxLimits,
    SandboxSyntaxError,
    check_expression,
    evaluate_expression,
    run_script,
)
from itsmflow.engine.sandbox.transform import compile_source

FAST = SandboxLimits(cpu_seconds=0.2, max_steps=200_000, max_output_items=200_000, max_memory_bytes=96 * 1024 * 1024)


def refused(source: str, variables: dict | None = None, *, script: bool = False,
            limits: SandboxLimits = FAST) -> SandboxViolation:
    runner = run_script if script else evaluate_expression
    with pytest.raises(SandboxViolation) as info:
        runner(source, variables or {}, limits)
    return info.value


def fails(source: str, variables: dict | None = None, *, script: bool = False) -> BaseException:
    """Refused by the sandbox or failing like ordinary Python: either way, no effect."""
    runner = run_script if script else evaluate_expression
    with pytest.raises(Exception) as info:
        runner(source, variables or {}, FAST)
    assert not isinstance(info.value, (SystemExit, KeyboardInterrupt))
    return info.value


# ------------------------------------------------------------------------------------------------
# escapes
# ------------------------------------------------------------------------------------------------

ESCAPES = [
    "().__class__.__base__.__subclasses__()",
    "[c for c in ().__class__.__bases__[0].__subclasses__()]",
    "__import__('os').system('echo hi')",
    "random._os",
    "f.__globals__",
    "(lambda: 0).__code__",
    "(lambda: 0).__globals__['__builtins__']",
    "len.__self__",
    "sorted.__call__",
    "(x for x in [1]).gi_frame",
    "(x for x in [1]).gi_frame.f_back.f_globals",
    "(x for x in [1]).gi_code",
    "e.tb_frame",
    "c.cr_frame",
    "'{0.__class__}'.format(1)",
    "'{x.__init__.__globals__}'.format(x=len)",
    "'{x.__class__.__mro__}'.format_map({'x': 1})",
    "str.format('{0.__class__}', 1)",
    "'{0.real}'.format(1)",
    "open('/etc/passwd')",
    "open('/etc/passwd').read()",
    "exec('import os')",
    "eval('1 + 1')",
    "compile('1', 'f', 'eval')",
    "getattr(1, '__class__')",
    "setattr(x, 'a', 1)",
    "vars()",
    "globals()",
    "locals()",
    "dir()",
    "type(1)",
    "object()",
    "super()",
    "breakpoint()",
    "input()",
    "help()",
    "memoryview(b'')",
    "bytearray(10)",
    "int.mro()",
    "(1).__class__",
    "_secret",
    "x._private",
    "x.__dict__",
    "{}.keys().mapping",
    "'a'.encode()",
    "(1).to_bytes(10**10, 'big')",
    "[x for x in ().__class__.__base__.__subclasses__() if x.__name__ == 'Popen']",
    "(lambda: None).__builtins__",
    "__builtins__",
    "__loader__",
]


@pytest.mark.parametrize("source", ESCAPES)
def test_escape_is_refused_statically(source):
    exc = refused(source, {"x": 1, "f": 1, "e": 1, "c": 1, "random": 1})
    assert "line 1" in str(exc)
    # deploy-time check refuses it as well
    with pytest.raises(SandboxViolation):
        check_expression(source)


@pytest.mark.parametrize("source", [
    "import os",
    "from os import system",
    "import os as o\no.system('x')",
    "global x\nx = 1",
    "def f():\n    nonlocal y",
    "class A:\n    pass",
    "async def f():\n    pass",
    "def f():\n    yield 1",
    "def f():\n    yield from [1]",
    "with x:\n    pass",
    "match x:\n    case 1:\n        pass",
    "@decorator\ndef f():\n    pass",
    "x.attr = 1",
    "del x.attr",
    "x.attr += 1",
    "def _hidden():\n    pass",
    "def f(_a):\n    pass",
    "f(_kw=1)",
    "try:\n    pass\nexcept Exception as _e:\n    pass",
    "x = b'bytes'",
])
def test_forbidden_statements(source):
    exc = refused(source, {"x": 1}, script=True)
    assert "line" in str(exc)


def test_violation_message_names_construct_and_line():
    with pytest.raises(SandboxViolation) as info:
        check_expression("a = 1\nb = 2\nc = ().__class__")
    assert str(info.value).startswith("line 3:") and "__class__" in str(info.value)
    with pytest.raises(SandboxViolation, match=r"line 2: 'import' statement is not allowed"):
        check_expression("a = 1\nimport os")
    with pytest.raises(SandboxViolation, match=r"call to 'eval'"):
        check_expression("eval('1')")
    with pytest.raises(SandboxSyntaxError) as syn:
        check_expression("a = = 1")
    assert isinstance(syn.value, SyntaxError) and isinstance(syn.value, SandboxViolation)
    assert check_expression("amount > 1000 and region == 'EU'") is None
    assert check_expression("total = sum(x['n'] for x in items)\nok = total > 3") is None
    assert check_expression("amount > 1", mode="eval") is None
    with pytest.raises(SandboxSyntaxError):
        check_expression("x = 1", mode="eval")


def test_side_effects_do_not_happen(tmp_path):
    target = tmp_path / "pwned"
    payloads = [
        f"__import__('os').system('touch {target}')",
        f"open('{target}', 'w').write('x')",
        f"exec(\"import os; os.system('touch {target}')\")",
        f"eval(\"__import__('os').system('touch {target}')\")",
        f"[c for c in ().__class__.__base__.__subclasses__() if c.__name__ == 'Popen'][0](['touch', '{target}'])",
        f"'{{0.__init__.__globals__[os].system}}'.format(f)",
    ]
    for p in payloads:
        fails(p, {"f": 1})
        fails(p, {"f": 1}, script=True)
    # functions smuggled in as task data are not exposed
    with pytest.raises(SandboxViolation, match="plain data"):
        evaluate_expression(f"f('touch {target}')", {"f": os.system})
    with pytest.raises(SandboxViolation, match="plain data"):
        run_script(f"r = f['sys']('touch {target}')", {"f": {"sys": os.system}})
    assert not target.exists()
    assert not os.path.exists("/tmp/pwned")


def test_task_data_cannot_smuggle_objects():
    class Secret:
        def get(self, key):  # a public method a script could call
            return "leaked"

    for value in (random, os, Secret(), [Secret()], {"k": Secret()}, {Secret: 1}, len, (i for i in range(2)),
                  {1, 2, frozenset()}):
        with pytest.raises(SandboxViolation, match="plain data"):
            evaluate_expression("x", {"x": value})
    # names the code does not mention are never looked at (nor exposed)
    assert evaluate_expression("1 + 1", {"x": Secret(), "_private": 1}) == 2
    # keys starting with "_" are invisible even if present
    with pytest.raises(SandboxViolation):
        evaluate_expression("_private", {"_private": 1})
    # plain data of every supported kind passes
    data = {"s": "x", "i": 1, "f": 1.5, "b": True, "n": None, "d": Decimal("1.5"), "dt": datetime(2024, 1, 1),
            "day": date(2024, 1, 1), "td": timedelta(1), "l": [1, [2]], "t": (1, 2), "m": {"a": {"b": [1]}}, "set": {1}}
    assert evaluate_expression("[s, i, f, b, n, d, dt, day, td, l, t, m, set]", data)[0] == "x"


def test_builtins_expose_no_modules_or_dangerous_callables():
    import types

    env = SandboxEnvironment()
    for name, value in env._builtins.items():
        assert not isinstance(value, types.ModuleType), name
    for name in ("eval", "exec", "open", "getattr", "__import__", "compile", "globals", "vars", "type", "object"):
        assert name not in env._builtins
    assert fails("dunno()").__class__ is NameError


# ------------------------------------------------------------------------------------------------
# CPU, steps, recursion
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("source", [
    "while True: pass",
    "while True:\n    x = 1",
    "for i in range(10**6):\n    for j in range(10**6):\n        pass",
    "x = [i for i in range(10**6) for j in range(10**6)]",
    "def f():\n    return f()\nf()",
    "f = lambda n: f(n + 1)\nf(0)",
    "def f(n):\n    try:\n        return f(n + 1)\n    except Exception:\n        return f(n + 1)\nf(0)",
    "while True:\n    try:\n        while True: pass\n    except:\n        pass",
    "def f():\n    try:\n        while True: pass\n    finally:\n        return 1\nwhile True:\n    f()",
    "def g():\n    while True: pass\ntry:\n    g()\nexcept BaseException:\n    pass",
    "l = [1]\nlist(map(l.append, l))",
    "l = [1]\nany(map(l.append, l))",
    "x = sorted(range(10**6), key=lambda v: [w for w in range(100)])",
])
def test_runaway_code_stops(source):
    start = time.monotonic()
    exc = fails(source, script=True)
    assert time.monotonic() - start < 2.0
    assert isinstance(exc, (SandboxViolation, NameError)), repr(exc)


def test_runaway_expressions_stop_with_violation():
    for source in ("sum(range(10**12))", "len(list(range(10**9)))", "any(x < 0 for x in range(10**12))",
                   "[x for x in range(10**7)]", "max(range(10**8))", "(lambda f: f(f))(lambda f: f(f))"):
        start = time.monotonic()
        refused(source)
        assert time.monotonic() - start < 1.5, source


def test_default_limits_stop_an_infinite_loop_within_a_second():
    start = time.monotonic()
    with pytest.raises(SandboxViolation, match="step limit|CPU time"):
        run_script("while True:\n    pass", {})
    assert time.monotonic() - start < 1.5
    start = time.monotonic()
    with pytest.raises(SandboxViolation, match="CPU time"):
        run_script("x = 0\nwhile True:\n    x = (x + 17) * 3 % 1000003", {}, SandboxLimits(max_steps=10**9))
    assert time.monotonic() - start < 1.5


def test_recursion_limit_and_legit_recursion():
    assert run_script("def fact(n):\n    return 1 if n <= 1 else n * fact(n - 1)\nr = fact(20)", {})["r"] == 2432902008176640000
    with pytest.raises(SandboxViolation, match="recursion"):
        run_script("def f(n):\n    return f(n + 1)\nf(0)", {})
    with pytest.raises(SandboxViolation, match="recursion"):
        run_script("f = lambda n: f(n + 1)\nf(0)", {})
    # depth is restored after returns and exceptions
    script = ("def f(n):\n    if n == 0:\n        raise ValueError('x')\n    return f(n - 1)\n"
              "for i in range(50):\n    try:\n        f(150)\n    except ValueError:\n        pass\nok = True")
    assert run_script(script, {})["ok"] is True


def test_memory_growth_is_stopped():
    refused("l = []\nwhile True:\n    l.append('x' * 999999)", script=True)
    refused("s = 'x' * 999999\nl = []\nwhile True:\n    l.append(s.upper())", script=True)


# ------------------------------------------------------------------------------------------------
# output size
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("source", [
    "'a' * 10**10",
    "10**10 * 'a'",
    "[0] * 10**9",
    "(0,) * 10**9",
    "[[0] * 1000] * 10**4",
    "10 ** 10 ** 10",
    "2 ** 10**7",
    "pow(10, 10**10)",
    "pow(3, 10**100, 10**5000)",
    "1 << 10**10",
    "'x'.ljust(10**10)",
    "'x'.rjust(10**10)",
    "'x'.center(10**10)",
    "'x'.zfill(10**10)",
    "'\\t'.expandtabs(10**10)",
    "'%0999999999d' % 1",
    "'%.999999999f' % 1.5",
    "'%(a)0999999999d' % {'a': 1}",
    "'%*d' % (10**9, 1)",
    "f'{1:999999999}'",
    "f'{1:{w}}'",
    "f'{1.5:.999999999f}'",
    "f'{s}{s}{s}{s}{s}{s}{s}{s}'",
    "format(1, '0999999999d')",
    "'{:999999999}'.format(1)",
    "'{:{}}'.format(1, 10**9)",
    "'{0:>{1}}'.format('x', 10**9)",
    "'{a:>999999999}'.format_map({'a': 1})",
    "('a' * 1000).replace('a', 'b' * 10000)",
    "('a' * 1000).replace('', 'x' * 2000)",
    "'x'.join(['a' * 1000] * 2000)",
    "('a' * 1000).translate({97: 'b' * 10000})",
    "datetime(2024, 1, 1).strftime('%c' * 100000)",
    "datetime(2024, 1, 1).strftime('%999999999Y')",
    "[*range(10**6), *range(10**6)]",
    "str([[0] * 1000] * 10000)",
    "repr([[0] * 1000] * 10000)",
    "int(Decimal('1e999999'))",
    "round(Decimal('1e999999'))",
    "Decimal('1e99999999')",
    "'%d' % Decimal('1e999999')",
    "sum([[1]] * 1000, [])",
    "dict.fromkeys(range(10**7))",
])
def test_output_bombs_are_refused(source):
    start = time.monotonic()
    exc = refused(source, {"w": 10**9, "s": "x" * 900_000})
    assert time.monotonic() - start < 1.0
    assert "too" in str(exc) or "not allowed" in str(exc) or "only" in str(exc) or "range" in str(exc)


@pytest.mark.parametrize("source", [
    "s = 'a'\nwhile True:\n    s = s + s",
    "s = 'a'\nwhile True:\n    s += s",
    "l = [1]\nwhile True:\n    l += l",
    "l = [1]\nwhile True:\n    l.extend(l)",
    "l = [1]\nwhile True:\n    l = [*l, *l]",
    "x = 2\nwhile True:\n    x = x * x",
    "x = 2\nwhile True:\n    x **= 2",
    "x = [1]\nfor i in range(40):\n    x = [x, x]\ns = str(x)",
    "x = [1]\nfor i in range(40):\n    x = [x, x]\ny = [1]\nfor i in range(40):\n    y = [y, y]\nsame = x == y",
    "a = [0] * 1000\nb = [a] * 1000\nc = [b] * 1000",
    "t = ()\nfor i in range(60):\n    t = (t, t)\nd = {t: 1}",
    "L = [()]\nfor i in range(60):\n    L = list(zip(L, L))\nd = {L[0]: 1}",
    "x = []\nx.append(x)\ns = str(x)",
    "d = {0: [0] * 1000}\nb = list(map(d.get, [0] * 1000))",
    "big = 'x' * 900000\nl = [big, big, big]",
    "l = [1]\nwhile True:\n    l[len(l):] = l",
    "l = [1]\nwhile True:\n    l[:0] += l",
    "T = ()\n" + "T = list({T: T}.items())[0]\n" * 45,
    "T = ()\nfor i in range(60):\n    T = {T: T}.popitem()",
])
def test_blowups_in_scripts_are_refused(source):
    start = time.monotonic()
    refused(source, script=True)
    assert time.monotonic() - start < 1.5


# ------------------------------------------------------------------------------------------------
# what scripts and expressions can do
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("source, expected", [
    ("amount > 1000 and region == 'EU'", True),
    ("amount > 1000 and region != 'EU'", False),
    ("not (amount < 10 or region in ('US', 'APAC'))", True),
    ("1000 < amount <= 5000", True),
    ("amount >= limit", True),
    ("items[0]['qty'] * 2 + len(items)", 12),
    ("region.lower().startswith('e')", True),
    ("'EU' in regions and 'XX' not in regions", True),
    ("tags == ['a', 'b']", True),
    ("customer['tier'] if customer else 'none'", "gold"),
    ("customer.get('missing', 'dflt')", "dflt"),
    ("sorted(regions, reverse=True)[0]", "US"),
    ("max(i['qty'] for i in items)", 5),
    ("sum(i['qty'] for i in items)", 7),
    ("any(r == 'EU' for r in regions)", True),
    ("f'{region}-{amount:06d}'", "EU-002000"),
    ("'{}-{:>5}'.format(region, amount)", "EU- 2000"),
    ("'{r}/{a}'.format_map({'r': region, 'a': 1})", "EU/1"),
    ("'%s:%05.1f' % (region, 2.5)", "EU:002.5"),
    ("', '.join(regions)", "EU, US"),
    ("str(amount).zfill(6)", "002000"),
    ("isinstance(amount, int) and not isinstance(region, (int, float))", True),
    ("isinstance(price, Decimal) and isinstance(items, list) and isinstance(tags, tuple) is False", True),
    ("(due - timedelta(days=1)).isoformat()", "2024-02-29T00:00:00"),
    ("due.strftime('%Y-%m-%d') + ' ' + due.date().isoformat()", "2024-03-01 2024-03-01"),
    ("price * 3", Decimal("3.30")),
    ("round(price * 3, 1)", Decimal("3.3")),
    ("int(price) + int('7') + round(2.5)", 10),
    ("divmod(amount, 7)", (285, 5)),
    ("list(map(lambda x: x * 2, [1, 2, 3]))", [2, 4, 6]),
    ("list(zip(regions, range(2)))", [("EU", 0), ("US", 1)]),
    ("dict(enumerate(regions))", {0: "EU", 1: "US"}),
    ("{k: v for k, v in customer.items() if k != 'id'}", {"tier": "gold"}),
    ("[x for x in range(5) if x % 2]", [1, 3]),
    ("2 ** 10 + pow(2, 5) + (1 << 4)", 1024 + 32 + 16),
    ("'a' * 3 + 'b'", "aaab"),
    ("[0] * 3", [0, 0, 0]),
    ("abs(-3) + len('abc') + ord('a') - ord(chr(97))", 6),
    ("datetime(2024, 1, 31) + timedelta(hours=12) > due", False),
    ("str(price)", "1.10"),
    ("repr('x')", "'x'"),
    ("min(3, 1, 2) + max([4, 5])", 6),
    ("tuple(regions)", ("EU", "US")),
    ("set(regions) == {'EU', 'US'}", True),
    ("'{0[tier]}/{c[id]}'.format(customer, c=customer)", "gold/7"),
    ("[k for k, v in sorted(customer.items())]", ["id", "tier"]),
    ("regions[:1] + regions[1:]", ["EU", "US"]),
])
def test_expressions(source, expected):
    data = {
        "amount": 2000, "region": "EU", "limit": 1500, "regions": ["EU", "US"], "tags": ["a", "b"],
        "items": [{"qty": 5}, {"qty": 2}], "customer": {"id": 7, "tier": "gold"}, "price": Decimal("1.10"),
        "due": datetime(2024, 3, 1),
    }
    assert evaluate_expression(source, data) == expected


def test_scripts_set_variables():
    script = """
total = 0
for item in items:
    total += item['qty'] * item['price']
vat = total * Decimal('0.2')
summary = {'lines': len(items), 'total': total, 'vat': vat, 'names': [i['name'].upper() for i in items]}
due = created + timedelta(days=3, hours=2)
weekday = due.weekday()
def discount(amount, pct=10):
    return amount - amount * pct / 100
net = discount(total)
square = lambda v: v * v
squares = list(map(square, range(4)))
pairs = {k: v for k, v in zip('abc', range(3))}
seen = set()
for name in ['x', 'y', 'x']:
    seen.add(name)
unique = sorted(seen)
del seen
message = f"{len(items)} items, total {total:.2f}"
try:
    boom = 1 / 0
except ZeroDivisionError:
    boom = None
counter = {}
for w in 'a b a'.split():
    counter[w] = counter.get(w, 0) + 1
counter['a'] += 10
matrix = [[0] * 3 for _ in range(2)]
matrix[1][2] += 5
window = [1, 2, 3, 4]
window[1:3] = ['b', 'c']
window[:1] += ['a']
items[0]['qty'] += 1
del temp
"""
    data = {
        "items": [{"name": "a", "qty": 2, "price": Decimal("1.50")}, {"name": "b", "qty": 1, "price": Decimal("3")}],
        "created": datetime(2024, 1, 1, 9), "temp": 1, "untouched": "keep",
    }
    env = SandboxEnvironment()
    assert env.execute(script, data) is True
    assert data["total"] == Decimal("6.00") and data["vat"] == Decimal("1.200")
    assert data["summary"] == {"lines": 2, "total": Decimal("6.00"), "vat": Decimal("1.200"), "names": ["A", "B"]}
    assert data["due"] == datetime(2024, 1, 4, 11) and data["weekday"] == 3
    assert data["net"] == Decimal("5.4")
    assert data["squares"] == [0, 1, 4, 9] and data["pairs"] == {"a": 0, "b": 1, "c": 2}
    assert data["unique"] == ["x", "y"] and "seen" not in data
    assert data["message"] == "2 items, total 6.00" and data["boom"] is None
    assert data["counter"] == {"a": 12, "b": 1}
    assert data["matrix"] == [[0, 0, 0], [0, 0, 5]]
    assert data["window"] == [1, "a", "b", "c", 4]
    assert data["items"][0]["qty"] == 3
    assert "temp" not in data and data["untouched"] == "keep"
    # functions, lambdas, builtins and helpers never end up in task data
    assert "discount" not in data and "square" not in data
    assert not any(k.startswith("_") for k in data)
    assert not any(callable(v) for v in data.values())


def test_execute_semantics_match_spiff():
    env = SandboxEnvironment()
    data = {"x": 1, "len": 5}
    env.execute("y = x + len\nx = 10", data, {"ext": 3})
    assert data == {"x": 10, "len": 5, "y": 6}
    # external context is readable, assignments to its names are not kept
    data = {}
    env.execute("a = ext * 2\next = 99", data, {"ext": 3})
    assert data == {"a": 6}
    # a script that fails changes no top-level variable
    data = {"x": 1}
    with pytest.raises(ZeroDivisionError):
        env.execute("x = 2\ny = 1 / 0", data)
    assert data == {"x": 1}
    # evaluate does not write back
    data = {"x": 1}
    assert env.evaluate("(y := x + 1) * 2", data) == 4 and data == {"x": 1}


def test_results_and_outputs_must_be_plain_data():
    with pytest.raises(SandboxViolation, match="generator"):
        evaluate_expression("(x for x in range(3))", {})
    with pytest.raises(SandboxViolation, match="function"):
        evaluate_expression("[lambda: 1]", {})
    with pytest.raises(SandboxViolation, match="function"):
        run_script("d = {'f': lambda: 1}", {})
    with pytest.raises(SandboxViolation, match="too large"):
        run_script("data.append('x' * 600000)\ndata.append('y' * 600000)", {"data": []})
    with pytest.raises(SandboxViolation, match="too large"):
        evaluate_expression("data.append('x' * 900000) or data.append('x' * 900000) or True", {"data": []})
    # what a script stores must be storable by the engine
    with pytest.raises(SandboxViolation, match=r"type set.*use a list"):
        run_script("s = {1, 2}", {})
    with pytest.raises(SandboxViolation, match="keys must be strings"):
        run_script("d = {1: 'a'}", {})
    with pytest.raises(SandboxViolation, match="nested deeper"):
        run_script("x = []\nfor i in range(100):\n    x = [x]", {})
    assert run_script("x = []\nfor i in range(20):\n    x = [x]\nt = (1, 2)", {})["t"] == (1, 2)
    # large pre-existing data is fine; only growth counts
    big = {"blob": ["x" * 1000] * 3000}
    assert run_script("n = len(blob)", big)["n"] == 3000


def test_exceptions_leave_the_sandbox_small():
    with pytest.raises(ValueError) as info:
        run_script("raise ValueError([[0] * 1000] * 1000)", {})
    assert len(str(info.value)) < 100
    with pytest.raises(KeyError):
        evaluate_expression("d['missing']", {"d": {}})
    with pytest.raises(NameError):
        evaluate_expression("undefined_name + 1", {})


def test_compiled_code_is_cached_and_evaluation_is_fast():
    expr = "amount > 1000 and region == 'EU'"
    assert compile_source(expr, "eval") is compile_source(expr, "eval")
    assert compile_source(expr, "eval") is not compile_source(expr, "exec")
    env = SandboxEnvironment()
    data = {"amount": 2000, "region": "EU", **{f"v{i}": i for i in range(50)}}
    env.evaluate(expr, data)
    n = 5000
    start = time.perf_counter()
    for _ in range(n):
        env.evaluate(expr, data)
    per_call = (time.perf_counter() - start) / n
    assert per_call < 50e-6, f"{per_call * 1e6:.1f} us per evaluation"


def test_thread_safety_budgets_are_per_evaluation():
    env = SandboxEnvironment(SandboxLimits(cpu_seconds=0.3))
    errors: list[BaseException] = []
    results: list[bool] = []

    def hostile() -> None:
        try:
            env.execute("while True:\n    pass", {})
        except SandboxViolation as exc:
            errors.append(exc)

    def friendly() -> None:
        for i in range(300):
            data = {"n": i}
            env.execute("t = 0\nfor k in range(200):\n    t += k\nok = t == 19900", data)
            results.append(data["ok"] and env.evaluate("n >= 0 and n < 300", {"n": i}))

    threads = [threading.Thread(target=hostile) for _ in range(2)] + [threading.Thread(target=friendly) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(errors) == 2 and len(results) == 900 and all(results)


# ------------------------------------------------------------------------------------------------
# SpiffWorkflow
# ------------------------------------------------------------------------------------------------

BPMN = """<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL"
                  xmlns:camunda="http://camunda.org/schema/1.0/bpmn"
                  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
                  id="defs" targetNamespace="http://example.org/sandbox">
  <bpmn:process id="route" isExecutable="true">
    <bpmn:startEvent id="start" />
    <bpmn:sequenceFlow id="f1" sourceRef="start" targetRef="compute" />
    <bpmn:scriptTask id="compute" name="Compute" scriptFormat="python">
      <bpmn:script>{script}</bpmn:script>
    </bpmn:scriptTask>
    <bpmn:sequenceFlow id="f2" sourceRef="compute" targetRef="decide" />
    <bpmn:businessRuleTask id="decide" name="Risk" camunda:decisionRef="risk" />
    <bpmn:sequenceFlow id="f3" sourceRef="decide" targetRef="gw" />
    <bpmn:exclusiveGateway id="gw" default="to_low" />
    <bpmn:sequenceFlow id="to_high" sourceRef="gw" targetRef="high">
      <bpmn:conditionExpression xsi:type="bpmn:tFormalExpression">
        {condition}
      </bpmn:conditionExpression>
    </bpmn:sequenceFlow>
    <bpmn:sequenceFlow id="to_low" sourceRef="gw" targetRef="low" />
    <bpmn:scriptTask id="high" scriptFormat="python"><bpmn:script>branch = 'high'</bpmn:script></bpmn:scriptTask>
    <bpmn:scriptTask id="low" scriptFormat="python"><bpmn:script>branch = 'low'</bpmn:script></bpmn:scriptTask>
    <bpmn:sequenceFlow id="f4" sourceRef="high" targetRef="end" />
    <bpmn:sequenceFlow id="f5" sourceRef="low" targetRef="end" />
    <bpmn:endEvent id="end" />
  </bpmn:process>
</bpmn:definitions>
"""

DMN = """<?xml version="1.0" encoding="UTF-8"?>
<definitions xmlns="https://www.omg.org/spec/DMN/20191111/MODEL/" id="dmn" name="dmn" namespace="http://camunda.org/schema/1.0/dmn">
  <decision id="risk" name="Risk">
    <decisionTable id="table">
      <input id="in1" label="Total">
        <inputExpression id="ie1" typeRef="integer"><text>total</text></inputExpression>
      </input>
      <output id="out1" label="Risk" name="risk" typeRef="string" />
      <rule id="r1">
        <inputEntry id="e1"><text>&gt; 1000</text></inputEntry>
        <outputEntry id="o1"><text>'high'</text></outputEntry>
      </rule>
      <rule id="r2">
        <inputEntry id="e2"><text>&lt;= 1000</text></inputEntry>
        <outputEntry id="o2"><text>'low'</text></outputEntry>
      </rule>
    </decisionTable>
  </decision>
</definitions>
"""

GOOD_SCRIPT = ("total = sum(line['qty'] * line['price'] for line in lines)\n"
               "due = datetime(2024, 1, 1) + timedelta(days=2)\n"
               "fee = Decimal('2.50') * 2")


GOOD_CONDITION = "total > 1000 and risk == 'high' and region in ('EU', 'US')"


def _xml_text(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _workflow(script: str, data: dict, limits: SandboxLimits | None = None,
              condition: str = GOOD_CONDITION) -> BpmnWorkflow:
    parser = CamundaParser()
    xml = BPMN.replace("{script}", _xml_text(script)).replace("{condition}", _xml_text(condition))
    parser.add_bpmn_str(xml.encode(), "route.bpmn")
    parser.add_dmn_str(DMN.encode(), "risk.dmn")
    spec = parser.get_spec("route")
    subprocess_specs = parser.get_subprocess_specs("route")
    workflow = BpmnWorkflow(spec, subprocess_specs, script_engine=SandboxedScriptEngine(limits=limits or FAST))
    workflow.get_next_task().data.update(data)  # start event
    return workflow


@pytest.mark.parametrize("lines, branch", [
    ([{"qty": 3, "price": 400}], "high"),
    ([{"qty": 1, "price": 400}], "low"),
])
def test_spiff_workflow_runs_in_the_sandbox(lines, branch):
    wf = _workflow(GOOD_SCRIPT, {"lines": lines, "region": "EU"})
    wf.do_engine_steps()
    assert wf.is_completed()
    data = wf.data
    assert data["branch"] == branch
    assert data["risk"] == ("high" if branch == "high" else "low")
    assert data["due"] == datetime(2024, 1, 3) and data["fee"] == Decimal("5.00")
    assert not any(callable(v) for v in data.values())


@pytest.mark.parametrize("script", [
    "__import__('os').system('touch {target}')",
    "open('{target}', 'w').write('pwned')",
    "x = [c for c in ().__class__.__base__.__subclasses__()]",
    "while True:\n    pass",
    "s = 'x' * 10**10",
    "def f():\n    return f()\nf()",
])
def test_hostile_script_task_becomes_an_error_without_side_effects(tmp_path, script):
    target = tmp_path / "pwned"
    wf = _workflow(script.replace("{target}", str(target)), {"lines": [], "region": "EU"})
    start = time.monotonic()
    with pytest.raises(WorkflowTaskException) as info:
        wf.do_engine_steps()
    assert time.monotonic() - start < 2.0
    assert isinstance(info.value.__context__, SandboxViolation)  # SpiffWorkflow raised it from ours
    assert info.value.error_type in ("SandboxViolation", "SandboxSyntaxError")
    assert info.value.task.task_spec.bpmn_id == "compute"
    assert not wf.is_completed()
    assert not target.exists()


@pytest.mark.parametrize("condition", ["().__class__.__subclasses__()", "sum(range(10**12)) > 0",
                                       "len('x' * 10**10) > 0"])
def test_hostile_gateway_condition_is_an_error(condition):
    wf = _workflow(GOOD_SCRIPT, {"lines": [{"qty": 3, "price": 400}], "region": "EU"}, condition=condition)
    with pytest.raises(WorkflowTaskException) as info:
        wf.do_engine_steps()
    assert isinstance(info.value.__context__, SandboxViolation)
    assert info.value.task.task_spec.bpmn_id == "gw"


def test_engine_validate_and_services():
    engine = SandboxedScriptEngine()
    assert engine.validate("total > 1000") is None
    with pytest.raises(SyntaxError):  # what SpiffWorkflow's DMN engine expects for "> 1000"
        engine.validate("> 1000")
    with pytest.raises(SandboxViolation):
        engine.validate("__import__('os')")
    with pytest.raises(SandboxViolation):
        engine.environment.call_service({}, operation_name="x")
