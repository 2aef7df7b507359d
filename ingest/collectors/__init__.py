"""Long-running network collectors that feed the bus (``taishi run`` starts them)."""
