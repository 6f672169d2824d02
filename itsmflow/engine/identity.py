"""Who is acting: the engine's notion of a caller, independent of how it authenticated."""

from __future__ import annotations

from dataclasses import dataclass, field

ADMIN_ROLE = "admin"


@dataclass(frozen=True)
class Principal:
    user_id: str
    roles: frozenset[str] = field(default_factory=frozenset)
    name: str | None = None

    @property
    def is_admin(self) -> bool:
        return ADMIN_ROLE in self.roles


SYSTEM = Principal("system", frozenset({ADMIN_ROLE}), "itsmflow engine")
