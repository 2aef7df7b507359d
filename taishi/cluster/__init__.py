"""Cluster mode: Kafka, Spark Structured Streaming and a search node.

``services``  fetches the Kafka broker and the search node from Maven Central
              into a git-ignored cache and starts/stops them on loopback
              (``taishi services up|down|status``).
``search``    the search store: one interface over the ``elasticsearch`` 8.x and
              ``opensearch-py`` clients, parallel to :mod:`taishi.store`.

Nothing here is imported by embedded mode; the clients come with the
``cluster`` extra (``pip install -e '.[cluster]'``).
"""
