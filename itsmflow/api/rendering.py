"""JSON rendering that never fails on text the engine accepted.

Starlette encodes JSON as UTF-8, which raises on lone surrogates (``"\\ud800"`` is valid JSON
input and a valid Python ``str``, but not encodable UTF-8). Encoding with ``backslashreplace``
turns such a character back into its JSON escape, so the output stays valid JSON.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi.responses import JSONResponse as _StarletteJSON


class JSONResponse(_StarletteJSON):
    def render(self, content: Any) -> bytes:
        return json.dumps(
            content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
        ).encode("utf-8", "backslashreplace")
