"""Resource limits of one sandboxed evaluation."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SandboxLimits:
    """Limits applied to every expression/script evaluation.

    ``cpu_seconds`` is CPU time of the evaluating thread (``time.thread_time``), so other
    threads of the server do not eat into a script's budget.  ``max_steps`` counts loop
    iterations, comprehension items, function calls and guarded bulk operations.
    """

    cpu_seconds: float = 0.5
    max_steps: int = 1_000_000
    #: largest string (characters) a single operation may produce, also caps str()/repr()/format
    max_output_chars: int = 1_000_000
    #: largest list/tuple/set (elements) a single operation may produce; also caps the "logical"
    #: size (nodes, counting shared sub-structures each time) of values compared, sorted or hashed
    max_output_items: int = 1_000_000
    #: how much (approx. JSON bytes) a script may add to the task data, and the size of a result
    max_data_bytes: int = 1_000_000
    #: deepest nesting of containers in task data a script writes or an expression returns
    max_data_depth: int = 32
    #: largest range() a script may create
    max_range: int = 1_000_000
    #: largest integer (bits) arithmetic may produce
    max_int_bits: int = 100_000
    #: nesting of user-defined function calls
    max_depth: int = 200
    #: growth of the process' resident memory during one evaluation (None: not checked)
    max_memory_bytes: int | None = 256 * 1024 * 1024
    #: longest expression/script source accepted
    max_source_chars: int = 100_000
    #: largest task data value accepted as input (guards against cyclic/aliased host data)
    max_input_bytes: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.cpu_seconds <= 0:
            raise ValueError("cpu_seconds must be positive")
        for name in ("max_steps", "max_output_chars", "max_output_items", "max_data_bytes", "max_range",
                     "max_int_bits", "max_depth", "max_data_depth", "max_source_chars", "max_input_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
