"""Sigma logsource routing: which events a rule applies to.

The mapping is data, in ``logsources.yaml`` beside this module (see the
comments there). :func:`logsource_key` turns a rule's logsource into the
``product/category/service`` key; :class:`LogsourceTable` turns a key into a
:class:`~detect.compile.Node` over ECS fields, or ``None`` when unknown.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import yaml

from detect.compile import BatchContext, Node, _in_leaf, _exists_leaf, leaf

DEFAULT_TABLE = Path(__file__).with_name("logsources.yaml")


def logsource_key(product: str | None, category: str | None, service: str | None) -> str:
    return "/".join((x or "").strip().lower() for x in (product, category, service))


def _filter_node(spec: Mapping[str, Any]) -> Node:
    children: list[Node] = []
    for fld, cond in spec.items():
        if isinstance(cond, Mapping):
            if set(cond) != {"exists"}:
                raise ValueError(f"logsource filter on {fld}: only {{exists: bool}} is allowed, got {cond}")
            children.append(_exists_leaf(fld, bool(cond["exists"])))
        elif isinstance(cond, (list, tuple)):
            children.append(_in_leaf(fld, [str(c) for c in cond]))
        else:
            children.append(_in_leaf(fld, [str(cond)]))
    return Node("and", children) if children else Node("const", key=True)


def _tag_node(key: str) -> Node:
    """Events the user tagged with ``taishi.logsource == key``."""
    value_set = pa.array([key], pa.string())

    def run(ctx: BatchContext) -> np.ndarray:
        v = ctx.view("taishi.logsource")
        if v is None:
            return ctx.false
        return v.rows(
            pc.fill_null(pc.is_in(v.lower, value_set=value_set), False).to_numpy(zero_copy_only=False)
        )

    return leaf(("logsource-tag", key), run, {"taishi.logsource"})


class LogsourceTable:
    def __init__(self, table: Mapping[str, Mapping[str, Any]]):
        self.table = {k.lower(): dict(v or {}) for k, v in table.items()}
        self._nodes: dict[Any, Node] = {}

    @classmethod
    def load(cls, path: Path = DEFAULT_TABLE) -> "LogsourceTable":
        return cls(yaml.safe_load(path.read_text(encoding="utf-8")) or {})

    def known(self, key: str) -> bool:
        return key in self.table

    def tag_node(self, key: str) -> Node:
        """Filter for a logsource with no ECS mapping: only events tagged ``taishi.logsource == key``."""
        k = ("tag", key)
        if k not in self._nodes:
            self._nodes[k] = _tag_node(key)
        return self._nodes[k]

    def node(self, key: str) -> Node | None:
        """Filter for ``key``: the table's ECS filter OR taishi.logsource == key. None if unknown."""
        if key not in self.table:
            return None
        if key not in self._nodes:
            self._nodes[key] = Node("or", [_filter_node(self.table[key]), _tag_node(key)])
        return self._nodes[key]
