"""The directory file: users, their roles and their API tokens (YAML, see docs/directory.md).

```yaml
users:
  - id: alice
    name: Alice Example
    roles: [change-manager, cab-member]
    token: "plain-token"          # or token_sha256: "<hex>"
    demo: true                    # optional: marks a shipped demo credential
```
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import InvalidRequest
from .identity import Principal


class DirectoryError(InvalidRequest):
    """The directory file is malformed."""


@dataclass(frozen=True)
class User:
    id: str
    name: str
    roles: frozenset[str]
    token_sha256: str | None = None
    demo: bool = False

    def principal(self) -> Principal:
        return Principal(self.id, self.roles, self.name)


@dataclass
class Directory:
    users: dict[str, User] = field(default_factory=dict)
    source: str | None = None

    @classmethod
    def load(cls, path: Path) -> "Directory":
        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise DirectoryError(f"{path}: cannot read directory file: {exc}") from exc
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls, raw: dict, source: str = "<directory>") -> "Directory":
        if not isinstance(raw, dict) or not isinstance(raw.get("users", []), list):
            raise DirectoryError(f"{source}: expected a mapping with a 'users' list")
        users: dict[str, User] = {}
        for i, entry in enumerate(raw.get("users") or []):
            where = f"{source}: users[{i}]"
            if not isinstance(entry, dict) or not isinstance(entry.get("id"), str) or not entry["id"]:
                raise DirectoryError(f"{where}: every user needs a string 'id'")
            roles = entry.get("roles") or []
            if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
                raise DirectoryError(f"{where}.roles: expected a list of role ids")
            if entry["id"] in users:
                raise DirectoryError(f"{where}.id: duplicate user id {entry['id']!r}")
            token, digest = entry.get("token"), entry.get("token_sha256")
            if token is not None and not isinstance(token, str):
                raise DirectoryError(f"{where}.token: expected a string")
            if digest is not None and (not isinstance(digest, str) or len(digest) != 64):
                raise DirectoryError(f"{where}.token_sha256: expected 64 hex characters")
            if token is not None:
                digest = hashlib.sha256(token.encode()).hexdigest()
            users[entry["id"]] = User(
                id=entry["id"],
                name=str(entry.get("name") or entry["id"]),
                roles=frozenset(roles),
                token_sha256=digest.lower() if digest else None,
                demo=bool(entry.get("demo", False)),
            )
        return cls(users, source)

    def get(self, user_id: str) -> User | None:
        return self.users.get(user_id)

    def authenticate(self, token: str) -> User | None:
        digest = hashlib.sha256(token.encode()).hexdigest()
        for user in self.users.values():
            if user.token_sha256 and hmac.compare_digest(user.token_sha256, digest):
                return user
        return None

    def users_with_role(self, role: str) -> list[User]:
        return [u for u in self.users.values() if role in u.roles]

    @property
    def has_demo_tokens(self) -> bool:
        return any(u.demo and u.token_sha256 for u in self.users.values())
