"""Child process for the kill -9 test: walks instances of ten_steps one task at a time.

Usage: python -m tests.crash_worker DB_URL [STEPS]
Prints "ready" once the engine is open; with STEPS it SIGKILLs itself after that many steps.
"""

import os
import signal
import sys

from itsmflow.engine.core import Engine
from itsmflow.engine.directory import Directory
from itsmflow.engine.errors import Conflict
from itsmflow.settings import Settings

VARIABLES = {
    "record": {"amount": 5000},
    "approve": {"decision": "approved"},
    "prepare_a": {"part_a": "ready"},
    "prepare_b": {"part_b": "ready"},
    "implement": {"outcome": "successful"},
    "review": {"reviewOutcome": "closed"},
}
USERS = {"record": "rita", "approve": "mona", "review": "mona"}
DIRECTORY = Directory.from_dict({"users": [
    {"id": "rita", "roles": ["requester"]}, {"id": "mona", "roles": ["manager"]}, {"id": "wes", "roles": ["worker"]},
]})


def main() -> None:
    url = sys.argv[1]
    max_steps = int(sys.argv[2]) if len(sys.argv) > 2 else None
    engine = Engine(Settings(db=url, default_pack=False), DIRECTORY)
    print("ready", flush=True)
    steps = 0
    while True:
        tasks, _ = engine.tasks.query(definition_key="ten_steps", size=1)
        if not tasks:
            break
        task = tasks[0]
        user = DIRECTORY.get(USERS.get(task.task_definition_key, "wes")).principal()
        try:
            engine.tasks.complete(task.id, user, VARIABLES[task.task_definition_key])
        except Conflict:
            continue
        steps += 1
        print(f"step {steps} {task.task_definition_key}", flush=True)
        if max_steps is not None and steps >= max_steps:
            os.kill(os.getpid(), signal.SIGKILL)
    print("done", flush=True)


if __name__ == "__main__":
    main()
