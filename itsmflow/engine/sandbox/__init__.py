"""Restricted evaluator for expressions and scripts from uploaded BPMN/DMN files.

Everything SpiffWorkflow evaluates (gateway conditions, script tasks, timer, correlation and
multi-instance expressions, DMN cells) goes through :class:`SandboxedScriptEngine`:

* ``policy``      - static AST allow-list (no imports, no ``_names``, no class/async/yield...)
* ``transform``   - rewrites the AST to call runtime guards; compiled code is cached per source
* ``guards``      - per-evaluation :class:`Budget`: steps, CPU time, memory, depth, output sizes
* ``data``        - what may enter/leave the sandbox (plain data only) and size estimates
* ``environment`` - the SpiffWorkflow environment/engine and convenience functions
"""

from .environment import (
    SandboxedScriptEngine,
    SandboxEnvironment,
    check_expression,
    check_script,
    evaluate_expression,
    run_script,
)
from .limits import SandboxLimits
from .policy import ALLOWED_ATTRIBUTES, SandboxSyntaxError

__all__ = [
    "ALLOWED_ATTRIBUTES",
    "SandboxEnvironment",
    "SandboxLimits",
    "SandboxSyntaxError",
    "SandboxedScriptEngine",
    "check_expression",
    "check_script",
    "evaluate_expression",
    "run_script",
]
