"""Parsers: raw record batches -> ECS event batches, bad records -> dead letters.

A raw batch (``RAW_SCHEMA``) carries one record per row: the input it came
from (``taishi.source``, a stable name such as a file's base name), its offset
in that input, the file path when there is one, a framing ``hint`` and the raw
text. For Zeek TSV the hint is the file's header as JSON (``#path``,
``#fields``, ``#types``, separators), so a data line can be parsed on its own
anywhere, on a Spark executor as well as here.

Every parser is a function ``parse(raw: pa.Table) -> ParseResult`` registered
by format name in ``PARSERS``. It never raises on bad input: a record it cannot
read becomes a dead-letter row with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pyarrow as pa

RAW_SCHEMA = pa.schema(
    [
        pa.field("taishi.source", pa.string()),
        pa.field("log.offset", pa.int64()),
        pa.field("log.file.path", pa.string()),
        pa.field("hint", pa.string()),
        pa.field("event.original", pa.string()),
    ]
)


@dataclass
class ParseResult:
    events: pa.Table  # taishi.schema.EVENT_SCHEMA
    deadletters: pa.Table  # taishi.schema.DEADLETTER_SCHEMA


Parser = Callable[[pa.Table], ParseResult]

# format name -> parser; filled in by the parser modules (see _register below).
PARSERS: dict[str, Parser] = {}
