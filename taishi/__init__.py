"""Taishi (态势): network-security situational awareness.

The core package holds what every stage shares: the event schema, ids,
config, the embedded bus, the store, the query language, the pipeline runner,
the CLI and the HTTP API. Data flows ingest -> detect -> correlate -> store ->
dashboards; the stages live in the top-level packages of the same names.
"""

__version__ = "0.1.0"
