"""Run every benchmark in turn and print its figures (``make bench``).

Each script can also run alone; see its docstring. Results are appended to
bench/out/results.jsonl as JSON lines.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = [
    ["bench_parse.py", "--records", "300000"],
    ["bench_detect.py", "--records", "200000"],
    ["bench_correlate.py"],
    ["bench_pipeline.py", "--records", "300000"],
    ["bench_netflow.py", "--records", "300000"],
    ["bench_syslog.py", "--messages", "200000"],
    ["bench_pcap.py", "--repeat", "2"],
    ["bench_anomaly.py", "--records", "200000"],
    ["bench_cluster.py"],  # Kafka, the search node, Spark local[1] and local[2]: ~10 minutes on the shared machine
]

if __name__ == "__main__":
    failed = 0
    for script, *args in SCRIPTS:
        print(f"== {script} {' '.join(args)}", flush=True)
        failed |= subprocess.call([sys.executable, str(HERE / script), *args])
    sys.exit(failed)
