"""ingest: from bytes at the edge to ECS event batches.

``ingest.files`` frames files into raw records (lines, JSON array elements,
Zeek TSV data lines with their header as a hint) and tails growing files from
a checkpoint; ``ingest.sniff`` guesses a file's format; ``ingest.parsers``
turns raw batches into ECS event batches, each parser one module registered in
``ingest.parsers.PARSERS``.
"""
