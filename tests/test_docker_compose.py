"""The compose stack in docker/ is a valid deployment of what the repository holds.

``docker compose config`` validates the files where the compose plugin (or a
v2 ``docker-compose``) is installed; it is a static check and needs no engine.
Where only Debian's ``docker-compose`` 1.29 is installed, it validates them
against its compose schema instead (on a copy without the top-level ``name:``,
which v1 predates). Without either the same checks run on the YAML in Python, with compose's
``${VAR:-default}`` interpolation: the services, images and build, ports,
named volumes, healthchecks, dependencies, the Grafana provisioning mounts
(which must exist in the repository and agree with the dashboard provider's
path), and docker/taishi.yaml, which must load as a cluster-mode config whose
host names and ports are the compose services'. Each test says which
validation ran (``-rA`` shows it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yaml"
ES_OVERRIDE = DOCKER / "compose.elasticsearch.yaml"

SERVICES = {"kafka", "search", "spark-master", "spark-worker", "taishi-collectors", "taishi-ingest", "grafana"}
LONG_RUNNING = SERVICES - {"taishi-ingest"}
TAISHI_IMAGE_SERVICES = {"spark-master", "spark-worker", "taishi-collectors", "taishi-ingest"}


# --------------------------------------------------------------------------- compose CLI, when present


def compose_cli() -> tuple[str, list[str]] | None:
    """("v2", ``docker compose`` or a v2 ``docker-compose``), ("v1", Debian's ``docker-compose`` 1.x), or None."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return "v2", [docker, "compose"]
    dc = shutil.which("docker-compose")
    if dc:
        out = subprocess.run([dc, "version", "--short"], capture_output=True, text=True)
        if out.returncode == 0:
            return ("v2" if out.stdout.strip().lstrip("v").startswith("2") else "v1"), [dc]
    return None


def compose_config(files: list[Path], tmp: Path) -> dict:
    """The compose model as the CLI resolves it (``config``), or as this module does."""
    found = compose_cli()
    if found is None:
        return resolve(files)
    version, cli = found
    if version == "v1":  # v1 predates the top-level project name
        copies = []
        for f in files:
            c = tmp / f.name
            c.write_text("".join(l for l in f.read_text().splitlines(True) if not l.startswith("name:")))
            copies.append(c)
        files = copies
    argv = [*cli, "--project-directory", str(DOCKER)]
    for f in files:
        argv += ["-f", str(f)]
    env = {**os.environ, "TAISHI_INPUT": str(DOCKER)}  # the ingest bind mount needs an existing host path
    fmt = ["--format", "json"] if version == "v2" else []
    done = subprocess.run([*argv, "--profile", "ingest", "config", *fmt], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    model = json.loads(done.stdout) if version == "v2" else yaml.safe_load(done.stdout)
    return normalise(model, from_cli=True)


# --------------------------------------------------------------------------- the Python fallback

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def interpolate(value):
    """Compose's ``${VAR}`` / ``${VAR:-default}`` with an empty environment (defaults apply)."""
    if isinstance(value, str):
        return _VAR.sub(lambda m: m.group(2) or "", value)
    if isinstance(value, list):
        return [interpolate(v) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v) for k, v in value.items()}
    return value


def _merge(base: dict, over: dict) -> dict:
    """Compose's merge of an override file: mappings merge, volumes/ports merge by target, scalars replace."""
    out = dict(base)
    for k, v in over.items():
        if k in ("volumes", "ports") and isinstance(v, list) and isinstance(out.get(k), list):
            key = (lambda e: _volume(e)["target"]) if k == "volumes" else (lambda e: str(e))
            merged = {key(e): e for e in out[k]}
            merged.update({key(e): e for e in v})
            out[k] = list(merged.values())
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def resolve(files: list[Path]) -> dict:
    model: dict = {}
    for f in files:
        raw = yaml.safe_load(f.read_text())  # YAML anchors and merge keys are resolved here
        assert isinstance(raw, dict), f
        model = _merge(model, raw)
    return normalise(interpolate(model), from_cli=False)


def _volume(entry) -> dict:
    if isinstance(entry, dict):
        return entry
    parts = entry.split(":")
    source, target = (parts[0], parts[1]) if len(parts) > 1 else (None, parts[0])
    kind = "volume" if source and not source.startswith((".", "/", "~")) else ("bind" if source else "volume")
    return {"type": kind, "source": source, "target": target, "read_only": parts[2:] == ["ro"]}


def _port(entry) -> dict:
    if isinstance(entry, dict):
        return {"target": int(entry["target"]), "published": str(entry.get("published") or ""),
                "protocol": entry.get("protocol", "tcp"), "host_ip": entry.get("host_ip", "")}
    text, proto = (entry.split("/") + ["tcp"])[:2]
    parts = text.split(":")
    target = int(parts[-1])
    published = parts[-2] if len(parts) >= 2 else ""
    host_ip = parts[0] if len(parts) == 3 else ""
    return {"target": target, "published": published, "protocol": proto, "host_ip": host_ip}


def normalise(model: dict, from_cli: bool) -> dict:
    """Services with long-form volumes and ports, bind sources as absolute paths."""
    services = {}
    for name, svc in (model.get("services") or {}).items():
        svc = dict(svc)
        vols = []
        for v in svc.get("volumes") or []:
            v = dict(_volume(v))
            if v["type"] == "bind" and not from_cli:
                v["source"] = str((DOCKER / v["source"]).resolve())
            vols.append(v)
        svc["volumes"] = vols
        svc["ports"] = [_port(p) for p in svc.get("ports") or []]
        if "build" in svc and isinstance(svc["build"], dict) and not from_cli:
            b = dict(svc["build"])
            b["context"] = str((DOCKER / b.get("context", ".")).resolve())
            svc["build"] = b
        services[name] = svc
    return {**model, "services": services, "volumes": model.get("volumes") or {}}


def validation() -> str:
    cli = compose_cli()
    if cli:
        version, argv = cli
        return f"`{' '.join([Path(argv[0]).name, *argv[1:]])} config` ({version}) and the checks below on its model"
    return "Python structural validation (no docker compose plugin and no docker-compose on this machine)"


# --------------------------------------------------------------------------- checks


@pytest.fixture(scope="module", params=["opensearch", "elasticsearch"])
def stack(request, tmp_path_factory):
    files = [COMPOSE] if request.param == "opensearch" else [COMPOSE, ES_OVERRIDE]
    print(f"\n{request.param}: validated by {validation()}")
    return request.param, compose_config(files, tmp_path_factory.mktemp("compose"))


def test_services_images_and_build(stack):
    flavor, m = stack
    svcs = m["services"]
    assert set(svcs) == SERVICES
    for name, s in svcs.items():
        assert s.get("image"), name
    assert svcs["kafka"]["image"].startswith("apache/kafka:4.")
    search_image = svcs["search"]["image"]
    if flavor == "opensearch":
        assert search_image.startswith("opensearchproject/opensearch:2.19")
    else:
        assert search_image.startswith("docker.elastic.co/elasticsearch/elasticsearch:8.")
        assert svcs["search"]["environment"]["xpack.security.enabled"] == "false"
    for name in TAISHI_IMAGE_SERVICES:  # one image: executors run the driver's Python and code
        s = svcs[name]
        assert s["image"] == svcs["taishi-collectors"]["image"]
        ctx = Path(s["build"]["context"])
        assert ctx.resolve() == REPO
        assert (ctx / s["build"]["dockerfile"]).is_file()
    assert svcs["taishi-collectors"]["command"] == ["run"]
    assert svcs["taishi-ingest"]["profiles"] == ["ingest"]


def test_dependencies_and_healthchecks(stack):
    _, m = stack
    svcs = m["services"]
    for name in LONG_RUNNING:
        hc = svcs[name].get("healthcheck")
        assert hc and hc.get("test"), f"{name} has no healthcheck"
    for name, s in svcs.items():
        deps = s.get("depends_on") or {}
        for dep, cond in (deps.items() if isinstance(deps, dict) else ((d, {}) for d in deps)):
            assert dep in svcs, (name, dep)
            if cond.get("condition") == "service_healthy":
                assert svcs[dep].get("healthcheck"), (name, dep)
    collectors = svcs["taishi-collectors"]["depends_on"]
    assert {"kafka", "search", "spark-master", "spark-worker"} <= set(collectors)


def test_volumes(stack):
    _, m = stack
    declared = set(m["volumes"])
    for name, s in m["services"].items():
        for v in s["volumes"]:
            if v["type"] == "volume":
                assert v["source"] in declared, (name, v)
            elif v["type"] == "bind" and v["target"] != "/input":
                assert Path(v["source"]).exists(), (name, v["source"])
    # data that must outlive containers sits on named volumes
    def target_of(svc, path):
        return [v for v in m["services"][svc]["volumes"] if v["target"] == path]

    assert target_of("kafka", "/var/lib/kafka/data")[0]["type"] == "volume"
    assert target_of("grafana", "/var/lib/grafana")[0]["type"] == "volume"
    # the Spark checkpoint directory is on a volume the driver and the worker share
    cfg = taishi_config()
    ck = cfg.cluster["spark"]["checkpoint"]
    for svc in ("taishi-collectors", "spark-worker"):
        mounts = [v for v in m["services"][svc]["volumes"] if ck.startswith(v["target"].rstrip("/") + "/")]
        assert mounts and mounts[0]["source"] == "taishi-data", svc


def test_grafana_provisioning_mounts_exist(stack):
    flavor, m = stack
    g = m["services"]["grafana"]
    mounts = {v["target"]: Path(v["source"]) for v in g["volumes"] if v["type"] == "bind"}
    ds = mounts["/etc/grafana/provisioning/datasources"]
    dash = mounts["/etc/grafana/provisioning/dashboards"]
    assert (ds / "taishi.yaml").is_file() and (dash / "taishi.yaml").is_file()
    assert ds.resolve() == (REPO / "dashboards/provisioning" / ("datasources" if flavor == "opensearch"
                                                                 else "elasticsearch/datasources")).resolve()
    datasources = yaml.safe_load((ds / "taishi.yaml").read_text())["datasources"]
    want = "grafana-opensearch-datasource" if flavor == "opensearch" else "elasticsearch"
    assert {d["type"] for d in datasources} == {want}
    assert all(d["url"] == "${TAISHI_SEARCH_URL}" for d in datasources)
    assert g["environment"]["TAISHI_SEARCH_URL"] == "http://search:9200"
    if flavor == "opensearch":
        assert "grafana-opensearch-datasource" in g["environment"]["GF_INSTALL_PLUGINS"]
    # the dashboard provider reads the path the dashboards are mounted at
    provider = yaml.safe_load((dash / "taishi.yaml").read_text())["providers"][0]
    path = provider["options"]["path"]
    assert mounts[path].resolve() == (REPO / "dashboards").resolve()
    assert list((REPO / "dashboards").glob("*.json"))


def taishi_config():
    from taishi.config import load

    return load(DOCKER / "taishi.yaml")


def test_taishi_config_matches_the_stack(stack):
    _, m = stack
    cfg = taishi_config()
    svcs = m["services"]
    assert cfg.mode == "cluster"
    assert cfg.retention_days["events"] >= 180
    host = lambda url: re.sub(r"^[a-z]+://", "", url).split(":")[0]  # noqa: E731
    assert host(cfg.cluster["kafka"]["bootstrap"]) in svcs
    assert host(cfg.cluster["search"]["url"]) in svcs
    assert host(cfg.cluster["spark"]["master"]) in svcs
    assert host(cfg.cluster["grafana"]["url"]) in svcs
    # what `taishi run` listens on is what the collectors' container publishes
    published = {(p["target"], p["protocol"]) for p in svcs["taishi-collectors"]["ports"]}
    for kind, proto in (("syslog", "udp"), ("syslog", "tcp"), ("netflow", "udp")):
        port = int(cfg.collectors[kind][proto].rsplit(":", 1)[1])
        assert (port, proto) in published, (kind, proto)
    assert (int(cfg.collectors["metrics"].rsplit(":", 1)[1]), "tcp") in published
    # the driver's host name is its service name, so executors on the worker reach it
    assert svcs["taishi-collectors"]["hostname"] == "taishi-collectors"
    # the image's config file is this one
    mounted = [v for v in svcs["taishi-collectors"]["volumes"] if v["target"] == "/etc/taishi/taishi.yaml"]
    assert Path(mounted[0]["source"]).resolve() == (DOCKER / "taishi.yaml").resolve()


def test_dockerfile_copies_what_exists():
    text = (DOCKER / "Dockerfile").read_text()
    for src in re.findall(r"^COPY\s+(\S+)\s+\S+", text, flags=re.M):
        assert (REPO / src).exists(), src
    packages = {p.split(".")[0] for p in _pyproject_packages()}
    copied = {re.match(r"^COPY\s+(\S+)", l).group(1).rstrip("/") for l in text.splitlines() if l.startswith("COPY")}
    assert packages <= copied, packages - copied  # every top-level package the install names is in the image
    assert "openjdk-17" in text  # Spark needs Java 17


def _pyproject_packages() -> list[str]:
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
