"""Which status each operation of the OpenAPI document really answered, noted on the wire.

``StatusRecorder`` wraps the application as the outermost ASGI layer, so it sees what the
client sees: a 413 from the body-size limit, a 401 from a token check, a 422 from validation.
Each request is put under the documented operation the router would give it
(``METHOD /path/{param}``), or under ``None`` when the path and method name none: those are
the router's own answers (404, 405, a 307 that drops a trailing slash) and the body-size
limit's (413, given before any route is chosen), no operation's.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

ANSWERS_WITHOUT_OPERATION = {307, 404, 405, 413}
METHODS = ("get", "put", "post", "delete", "patch")


class StatusRecorder:
    def __init__(self, app: ASGIApp, document: dict[str, Any]) -> None:
        self.app = app
        self.document = document
        # Literal paths before templates, as the router prefers /backups/create over
        # /backups/{backup_id}.
        paths = sorted(document["paths"], key=lambda path: "{" in path)
        self._patterns = [
            (re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(path)) + "$"), path)
            for path in paths
        ]
        self.seen: dict[str | None, set[int]] = defaultdict(set)
        self.requests = 0

    def operation(self, method: str, path: str) -> str | None:
        for pattern, template in self._patterns:
            if pattern.match(path) and method.lower() in self.document["paths"][template]:
                return f"{method} {template}"
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        operation = self.operation(scope["method"], scope["path"])
        answered = False

        async def noting(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.start" and not answered:
                answered = True
                self.requests += 1
                self.seen[operation].add(message["status"])
            await send(message)

        await self.app(scope, receive, noting)

    def documented(self) -> set[str]:
        return {
            f"{method.upper()} {path}"
            for path, operations in self.document["paths"].items()
            for method in operations
            if method in METHODS
        }

    def declared(self, operation: str) -> set[int]:
        method, path = operation.split(" ", 1)
        responses = self.document["paths"][path][method.lower()]["responses"]
        return {int(status) for status in responses}

    def undeclared(self) -> list[str]:
        """Every status answered that the document does not declare, as ``operation: 413``;
        an answer without an operation outside ANSWERS_WITHOUT_OPERATION counts too."""
        problems = []
        for operation, statuses in sorted(self.seen.items(), key=lambda item: str(item[0])):
            allowed = ANSWERS_WITHOUT_OPERATION if operation is None else self.declared(operation)
            for status in sorted(statuses - allowed):
                problems.append(f"{operation or 'no operation'}: {status}")
        return problems
