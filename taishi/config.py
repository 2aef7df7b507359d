"""Configuration: defaults, then ``taishi.yaml``, then command-line flags.

With no file and no flags, everything works: data goes to ``./taishi-data``
(or ``$TAISHI_DATA_DIR``) and the rules shipped in the repository's
``rules/sigma`` are loaded. A ``taishi.yaml`` (found via ``--config``,
``$TAISHI_CONFIG`` or the working directory) may set any field below::

    mode: embedded            # or cluster
    data_dir: /var/lib/taishi
    rules: [rules/sigma, /etc/taishi/rules]
    retention_days: {events: 180, alerts: 365, deadletters: 30}
    allowed_lateness_s: 60
    batch_size: 8192
    api: {host: 127.0.0.1, port: 8765}
    collectors:               # what `taishi run` starts
      syslog: {udp: "0.0.0.0:514", tcp: "0.0.0.0:514", tls: "0.0.0.0:6514",
               cert: /etc/taishi/tls.crt, key: /etc/taishi/tls.key}
      netflow: {udp: "0.0.0.0:2055"}
      capture: {interface: eth0, bpf: "not port 22", idle_timeout: 60, active_timeout: 300}
                              # live packets -> flows + DNS/HTTP/TLS/SSH/ICS events (root or
                              # CAP_NET_RAW; optional decode_as: ["tcp.port==902,ssh"], max_flows)
      metrics: "127.0.0.1:9108"
    cluster:                  # mode: cluster (see taishi/cluster/ and docs/architecture.md)
      kafka: {bootstrap: "127.0.0.1:9092", partitions: 3, replication: 1, retention_hours: 168,
              delivery_timeout_s: 300}  # how long producers wait out a broker outage
      search: {url: "http://127.0.0.1:9200", flavor: auto, index_prefix: taishi}
      spark: {master: "local[2]", max_restarts: 10}  # failed streaming queries restarted (in a row)
                              # kafka_source: {option: value}: Spark's Kafka source options
      grafana: {url: "http://127.0.0.1:3000", user: admin, password: admin}
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RULES = REPO_ROOT / "rules" / "sigma"
MODES = ("embedded", "cluster")


@dataclass
class Config:
    mode: str = "embedded"
    data_dir: Path = field(default_factory=lambda: Path(os.environ.get("TAISHI_DATA_DIR", "taishi-data")))
    rules: list[Path] = field(default_factory=lambda: [DEFAULT_RULES])
    # The Cybersecurity Law (art. 21) asks for at least six months of network logs.
    retention_days: dict[str, int] = field(
        default_factory=lambda: {"events": 180, "alerts": 365, "deadletters": 30}
    )
    allowed_lateness_s: int = 60
    batch_size: int = 8192
    api_host: str = "127.0.0.1"
    api_port: int = 8765
    collectors: dict = field(default_factory=dict)
    cluster: dict = field(default_factory=dict)  # kafka / search / spark / grafana settings for mode: cluster
    source: Path | None = None  # the file this was loaded from

    @property
    def bus_dir(self) -> Path:
        return self.data_dir / "bus"

    @property
    def state_dir(self) -> Path:
        return self.data_dir / "state"


class ConfigError(ValueError):
    pass


def _find_file(explicit: Path | None) -> Path | None:
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(f"config file {explicit} not found")
        return explicit
    env = os.environ.get("TAISHI_CONFIG")
    if env:
        return _find_file(Path(env))
    local = Path("taishi.yaml")
    return local if local.is_file() else None


def load(
    path: Path | None = None,
    *,
    data_dir: Path | None = None,
    rules: list[Path] | None = None,
    mode: str | None = None,
) -> Config:
    """Defaults, overlaid by the config file, overlaid by explicit arguments (CLI flags)."""
    cfg = Config()
    file = _find_file(path)
    if file is not None:
        raw: Any = yaml.safe_load(file.read_text()) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{file}: expected a mapping at the top level")
        _apply(cfg, raw, file)
        cfg.source = file
    if data_dir is not None:
        cfg.data_dir = data_dir
    if rules:
        cfg.rules = list(rules)
    if mode is not None:
        cfg.mode = mode
    if cfg.mode not in MODES:
        raise ConfigError(f"mode must be one of {', '.join(MODES)}, not {cfg.mode!r}")
    return cfg


def _apply(cfg: Config, raw: dict[str, Any], file: Path) -> None:
    known = {f.name for f in fields(Config)} | {"api"}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"{file}: unknown setting(s) {', '.join(sorted(unknown))}")
    base = file.parent
    for key, value in raw.items():
        if key == "data_dir":
            cfg.data_dir = (base / str(value)).resolve()
        elif key == "rules":
            vals = value if isinstance(value, list) else [value]
            cfg.rules = [(base / str(v)).resolve() for v in vals]
        elif key == "retention_days":
            if not isinstance(value, dict):
                raise ConfigError(f"{file}: retention_days must map table -> days")
            cfg.retention_days.update({str(k): int(v) for k, v in value.items()})
        elif key in ("collectors", "cluster"):
            if not isinstance(value, dict):
                raise ConfigError(f"{file}: {key} must be a mapping")
            setattr(cfg, key, value)
        elif key == "api":
            cfg.api_host = str(value.get("host", cfg.api_host))
            cfg.api_port = int(value.get("port", cfg.api_port))
        elif key in ("allowed_lateness_s", "batch_size", "api_port"):
            setattr(cfg, key, int(value))
        else:
            setattr(cfg, key, value)
