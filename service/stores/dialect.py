"""What the component stores say differently to SQLite and to PostgreSQL.

Statements are written once, with ``?`` marks, the component's tables named
``<schema>.<table>`` and ``INSERT … ON CONFLICT … DO UPDATE SET x = excluded.x`` for
upserts, which both engines understand. What is left differs in values: how a list and a
JSON value are stored, the parameter mark, and how to order text by its bytes. (A new row's
id comes back as ``lastrowid`` on SQLite and through ``RETURNING id`` on PostgreSQL: each
engine's transaction says how. Schemas differ in their DDL and live beside each concept.)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from psycopg.types.json import Jsonb


@dataclass(frozen=True, slots=True)
class Dialect:
    name: str
    param_mark: str
    # Appended to ORDER BY a text column so that both engines sort by bytes ("Food" < "books").
    binary_order: str
    encode_list: Callable[[tuple[str, ...]], Any]
    decode_list: Callable[[Any], tuple[str, ...]]
    encode_json: Callable[[Any], Any]
    decode_json: Callable[[Any], Any]

    def sql(self, text: str) -> str:
        """``text`` with this engine's parameter marks."""
        return text if self.param_mark == "?" else text.replace("?", self.param_mark)


SQLITE = Dialect(
    name="sqlite",
    param_mark="?",
    binary_order="",  # SQLite compares text with BINARY unless told otherwise
    encode_list=lambda items: json.dumps(list(items)),
    decode_list=lambda stored: tuple(json.loads(stored)),
    encode_json=json.dumps,
    decode_json=json.loads,
)

POSTGRES = Dialect(
    name="postgresql",
    param_mark="%s",
    binary_order=' COLLATE "C"',
    encode_list=list,  # a TEXT[] column
    decode_list=tuple,
    encode_json=Jsonb,  # a JSONB column: psycopg decodes it on the way back
    decode_json=lambda stored: stored,
)
