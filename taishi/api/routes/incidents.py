"""Incidents and their traceback (溯源) over HTTP: the same JSON as ``taishi incidents ... --json``.

Routes (``x-permission`` in brackets)::

    GET  /api/v1/incidents?q&since&status&limit   {"count", "items"}, most recently active first
                                                   (each graph holds its alert edges and path)   [incidents:read]
    GET  /api/v1/incidents/{id}                    one incident; its graph completed from the
                                                   store (host names resolved, observed
                                                   connections) with ``graph.path``              [incidents:read]
    GET  /api/v1/incidents/{id}/graph?format=svg|png   the attack graph drawn                   [incidents:read]
    POST /api/v1/incidents/{id}/workflow           {"status"?, "assignee"?, "note"?}             [incidents:triage]

``q`` is a Lucene query over the incident fields (``severity:critical``,
``entity.value:10.20.0.40``, ``alert.ids:<id>`` finds the incident of an
alert), compiled by the store with bound parameters. ``status`` may repeat.
An illegal workflow transition is a 409 with the allowed ones named; every
change is appended to the incident's history with the caller's name.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Literal

from fastapi import Body, Depends, FastAPI, HTTPException, Query, Response
from pydantic import BaseModel, Field

from taishi.api.app import API, jsonable, parse_when, perm, require, workflow_change
from taishi.api.auth import User

STATUSES = Literal["new", "acknowledged", "in_progress", "resolved", "false_positive"]


class WorkflowIn(BaseModel):
    status: STATUSES | None = Field(None, description="new status (new → acknowledged → in_progress → "
                                    "resolved | false_positive; resolved/false_positive → acknowledged reopens)")
    assignee: str | None = Field(None, max_length=64, description="an existing user name; null or \"\" unassigns")
    note: str | None = Field(None, max_length=4000)


def register(app: FastAPI, ctx) -> None:
    def inventory() -> Any:
        try:
            inv = ctx.inventory()
            return inv if getattr(inv, "assets", None) else None
        except Exception:  # noqa: BLE001 - no inventory only means no host names in the graph
            return None

    def view(incident_id: str) -> dict[str, Any]:
        from correlate.traceback import incident_view

        inc = incident_view(ctx.store(), incident_id, inventory())
        if inc is None:
            raise HTTPException(404, "no such incident")
        return inc

    @app.get(f"{API}/incidents", tags=["incidents"], **perm("incidents:read"))
    def incidents(q: str = Query("", max_length=4000, description="Lucene query over incident fields"),
                  since: str | None = Query(None, description="last seen at or after: 24h, 7d, ISO-8601 ..."),
                  status: list[STATUSES] | None = Query(None, description="workflow status (repeatable)"),
                  limit: int = Query(100, ge=1, le=1000)) -> dict[str, Any]:
        """Incidents, most recently active first."""
        from correlate.traceback import list_view

        return jsonable(list_view(ctx.store(), q, since=parse_when(since), status=status or None, limit=limit))

    @app.get(f"{API}/incidents/{{incident_id}}", tags=["incidents"], **perm("incidents:read"))
    def incident(incident_id: str) -> dict[str, Any]:
        """One incident with its traceback graph and path, workflow and history."""
        return jsonable(view(incident_id))

    @app.get(f"{API}/incidents/{{incident_id}}/graph", tags=["incidents"], **perm("incidents:read"))
    def incident_graph(incident_id: str, format: Literal["svg", "png"] = Query("svg")) -> Response:
        """The attack graph drawn (nodes by kill-chain stage, the path in bold)."""
        from correlate.traceback import draw

        inc = view(incident_id)
        with tempfile.TemporaryDirectory() as tmp:
            out = draw(inc["graph"], Path(tmp) / f"graph.{format}", inc["title"])
            data = out.read_bytes()
        return Response(data, media_type="image/svg+xml" if format == "svg" else "image/png")

    @app.post(f"{API}/incidents/{{incident_id}}/workflow", tags=["incidents"], **perm("incidents:triage"))
    def workflow(incident_id: str, body: WorkflowIn = Body(...),
                 user: User = Depends(require("incidents:triage"))) -> dict[str, Any]:
        """Change status, (un)assign and/or add a note; appended to the history with who and when."""
        from correlate.incidents import WorkflowError

        set_assignee, assignee = workflow_change(body, app.state.users)
        try:
            inc = ctx.store().update_incident(incident_id, user.name, status=body.status, assignee=assignee,
                                              set_assignee=set_assignee, note=body.note or None)
        except WorkflowError as e:
            raise HTTPException(409, str(e)) from None
        if inc is None:
            raise HTTPException(404, "no such incident")
        return jsonable(view(incident_id))
