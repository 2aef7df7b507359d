"""The cluster's services on loopback: a Kafka broker and a search node.

``taishi services up|down|status`` (and the integration fixtures) use this
module. Each service is assembled from Maven Central artefacts, fetched once
with ``mvn dependency:copy-dependencies`` from a generated pom into the
git-ignored cache (``<repo>/.cache/services``, or ``$TAISHI_SERVICES_CACHE``)::

    <cache>/kafka-4.4.0/lib/*.jar              the broker's class path
    <cache>/opensearch-2.19.6/{lib,modules,plugins}
    <cache>/run/<name>.pid, <name>.log         what runs now, and its output
    <cache>/run/<name>/                        its configuration and data

Kafka runs as one KRaft node (broker and controller) on 127.0.0.1:9092; its
storage is formatted once. The search node is OpenSearch 2.19 on
127.0.0.1:9200 (security off, single-node discovery): no Elasticsearch 8 node
can be assembled from Maven Central alone (Elastic publishes no module jars
there, and the third-party module builds stopped reaching Central at 7.10).

Processes are started in their own session, so they outlive the command
that started them; ``down`` stops only processes whose pid file this module
wrote and whose command line carries the ``-Dtaishi.service=<name>`` marker.
A node that already answers on the port (started elsewhere) is reused and
reported as external, never stopped.

Test sessions use :func:`acquire`/:func:`release` instead of ``up``/``down``:
each holds a lease (``run/<name>.leases/<pid>-<token>``), and a service a
session started is stopped when the last live lease is released, so
concurrent test runs on one machine share the services safely; a service
started (or claimed) by ``taishi services up`` is never stopped by a release.

:class:`PrivateKafka` starts a broker of one's own (same node, a free port pair,
state under a given directory) for what must not happen to the shared one: a
test that crashes the broker mid-stream and restarts it.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator
from urllib.error import URLError
from urllib.request import urlopen
from xml.sax.saxutils import escape

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"

KAFKA_VERSION = "4.4.0"
LOG4J_VERSION = "2.25.5"
OPENSEARCH_VERSION = "2.19.6"

Report = Callable[[str], None]


class ServiceError(RuntimeError):
    """A service could not be fetched, started or stopped; the message says why."""


def _quiet(_msg: str) -> None:
    pass


def cache_dir() -> Path:
    """``$TAISHI_SERVICES_CACHE``, else ``<repo>/.cache/services``.

    As root the search node runs as ``nobody`` (OpenSearch refuses root), which must be
    able to reach the cache: when the repository sits below a directory others cannot
    enter (a ``mktemp -d`` checkout), the cache is ``/var/cache/taishi/services`` instead.
    """
    env = os.environ.get("TAISHI_SERVICES_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    default = REPO / ".cache" / "services"
    if os.geteuid() == 0 and not _others_can_enter(REPO):
        return Path("/var/cache/taishi/services")
    return default


def _others_can_enter(path: Path) -> bool:
    for p in [path, *path.parents]:
        try:
            if not p.stat().st_mode & 0o001:
                return False
        except OSError:
            return False
    return True


def run_dir() -> Path:
    return cache_dir() / "run"


def java() -> str:
    """The ``java`` to run the services with (``$JAVA_HOME/bin/java``, else the one on PATH; 17+)."""
    home = os.environ.get("TAISHI_JAVA_HOME") or os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    path = shutil.which("java")
    if path is None:
        raise ServiceError("java is not installed (Java 17 runs Kafka and the search node: apt-get install openjdk-17-jre-headless)")
    return path


@dataclass(frozen=True)
class Service:
    name: str        # kafka | search (the shared ones), or a private node's own name
    title: str
    product: str     # kafka | opensearch: what runs (its home in the cache)
    version: str
    port: int
    start_timeout: float
    base: Path | None = None  # where its state, pid file and log live (default: run_dir())

    @property
    def home(self) -> Path:
        return cache_dir() / f"{self.product}-{self.version}"

    @property
    def run(self) -> Path:
        return self.base if self.base is not None else run_dir()

    @property
    def state(self) -> Path:
        return self.run / self.name

    @property
    def pid_file(self) -> Path:
        return self.run / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.run / f"{self.name}.log"

    @property
    def endpoint(self) -> str:
        return f"{HOST}:{self.port}" if self.product == "kafka" else f"http://{HOST}:{self.port}"

    @property
    def marker(self) -> str:
        return f"-Dtaishi.service={self.name}"


KAFKA = Service("kafka", "Kafka (KRaft)", "kafka", KAFKA_VERSION, 9092, start_timeout=120)
SEARCH = Service("search", "OpenSearch", "opensearch", OPENSEARCH_VERSION, 9200, start_timeout=240)
SERVICES = {s.name: s for s in (KAFKA, SEARCH)}


def get(name: str) -> Service:
    try:
        return SERVICES[name]
    except KeyError:
        raise ServiceError(f"unknown service {name!r}: one of {', '.join(SERVICES)}") from None


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    """One ``up``/``down`` at a time on this cache (several shells and test sessions share it)."""
    run_dir().mkdir(parents=True, exist_ok=True)
    with open(run_dir() / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- fetching
def _pom(artifacts: list[str]) -> str:
    deps = []
    for coord in artifacts:
        parts = coord.split(":")
        group, artifact, version = parts[:3]
        typ = f"<type>{escape(parts[3])}</type>" if len(parts) > 3 else ""
        deps.append(f"<dependency><groupId>{escape(group)}</groupId><artifactId>{escape(artifact)}</artifactId>"
                    f"<version>{escape(version)}</version>{typ}</dependency>")
    return ('<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>'
            "<groupId>taishi.services</groupId><artifactId>fetch</artifactId><version>1</version>"
            "<packaging>pom</packaging><dependencies>" + "".join(deps) + "</dependencies></project>\n")


def _mvn_copy(artifacts: list[str], dest: Path, work: Path, report: Report) -> list[Path]:
    """Resolve ``artifacts`` (``group:artifact:version[:type]``) with their runtime dependencies into ``dest``."""
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ServiceError("mvn is not installed (it fetches the services from Maven Central: apt-get install maven)")
    work.mkdir(parents=True, exist_ok=True)
    (work / "pom.xml").write_text(_pom(artifacts))
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [mvn, "-B", "-f", str(work / "pom.xml"), "dependency:copy-dependencies",
           f"-DoutputDirectory={dest}", "-DincludeScope=runtime", "-Dmdep.overWriteIfNewer=true"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=work)
    tail: list[str] = []
    n = 0
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        tail = (tail + [line])[-30:]
        if "Downloaded from" in line and line.split("/")[-1].split(" ")[0].endswith((".jar", ".zip")):
            n += 1
            report(f"downloaded {line.split('/')[-1].split(' ')[0]} ({n})")
        elif "Copying " in line:
            report("copying " + line.split("Copying ", 1)[1].split(" ")[0])
    if proc.wait() != 0:
        raise ServiceError("mvn could not fetch " + ", ".join(artifacts) + ":\n" + "\n".join(tail))
    return sorted(dest.glob("*.jar")) + sorted(dest.glob("*.zip"))


# Bumped when what `fetch` assembles changes (a new module ...): an older home is assembled again.
LAYOUT = {"kafka": 1, "opensearch": 2}


def fetched(svc: Service) -> bool:
    try:
        marker = json.loads((svc.home / ".fetched").read_text())
    except (OSError, ValueError):
        return False
    return marker.get("layout", 1) == LAYOUT[svc.product]


def fetch(svc: Service, report: Report = _quiet) -> Path:
    """The service's home in the cache, fetched from Maven Central the first time only."""
    home = svc.home
    if fetched(svc):
        return home
    report(f"fetching {svc.title} {svc.version} from Maven Central")
    partial = home.with_name(home.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    if svc.product == "kafka":
        _fetch_kafka(partial, report)
    else:
        from taishi.cluster import opensearch_dist

        opensearch_dist.assemble(partial, OPENSEARCH_VERSION, _mvn_copy, report)
    shutil.rmtree(home, ignore_errors=True)
    partial.rename(home)
    (home / ".fetched").write_text(json.dumps({"version": svc.version, "layout": LAYOUT[svc.product],
                                               "at": time.time()}) + "\n")
    return home


def _fetch_kafka(home: Path, report: Report) -> None:
    _mvn_copy([f"org.apache.kafka:kafka_2.13:{KAFKA_VERSION}",
               # the broker logs through slf4j 1.7 into log4j2 (kafka_2.13 brings log4j-core but no binding)
               f"org.apache.logging.log4j:log4j-slf4j-impl:{LOG4J_VERSION}"],
              home / "lib", home / "pom", report)


# --------------------------------------------------------------------------- processes
def _read_pid(svc: Service) -> int | None:
    try:
        pid = int(svc.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    return pid if svc.marker.encode() in cmdline else None


def _port_open(port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def _kafka_healthy(port: int) -> bool:
    """The broker answers an ApiVersions request (v0) without error."""
    client = b"taishi-health"
    body = struct.pack(">hhih", 18, 0, 7, len(client)) + client
    try:
        with socket.create_connection((HOST, port), timeout=2.0) as s:
            s.settimeout(5.0)
            s.sendall(struct.pack(">i", len(body)) + body)
            head = _recv(s, 4)
            (size,) = struct.unpack(">i", head)
            resp = _recv(s, size)
    except (OSError, struct.error):
        return False
    corr, error = struct.unpack(">ih", resp[:6])
    return corr == 7 and error == 0


def _recv(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise OSError("connection closed")
        buf += chunk
    return buf


def search_info(url: str, timeout: float = 3.0) -> dict | None:
    """The root endpoint's JSON (name, version.distribution ...) or None when nothing answers."""
    try:
        with urlopen(url.rstrip("/") + "/", timeout=timeout) as resp:
            return json.loads(resp.read())
    except (URLError, OSError, ValueError):
        return None


def _search_healthy(port: int) -> bool:
    try:
        with urlopen(f"http://{HOST}:{port}/_cluster/health?wait_for_status=yellow&timeout=2s", timeout=5) as resp:
            return json.loads(resp.read()).get("status") in ("green", "yellow")
    except (URLError, OSError, ValueError):
        return False


def healthy(svc: Service) -> bool:
    return _kafka_healthy(svc.port) if svc.product == "kafka" else _search_healthy(svc.port)


def status(names: list[str] | None = None) -> list[dict]:
    """What runs: one row a service (``running`` = started by us, ``external`` = someone else's)."""
    rows = []
    for name in names or list(SERVICES):
        svc = get(name)
        pid = _read_pid(svc)
        ok = healthy(svc)
        row = {"name": svc.name, "title": svc.title, "version": svc.version, "endpoint": svc.endpoint,
               "fetched": fetched(svc), "pid": pid, "running": pid is not None, "healthy": ok,
               "external": ok and pid is None, "log": str(svc.log_file)}
        if svc.product == "opensearch" and ok:
            info = search_info(svc.endpoint) or {}
            ver = info.get("version") or {}
            row["flavor"] = ver.get("distribution", "elasticsearch")
            row["version"] = ver.get("number", svc.version)
        rows.append(row)
    return rows


def _log_tail(svc: Service, n: int = 25) -> str:
    try:
        return "\n".join(svc.log_file.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def up(name: str, report: Report = _quiet) -> dict:
    """Fetch (once), start and health-wait one service; reuse it when it already answers."""
    svc = get(name)
    with _lock():
        info = _up(svc, report)
        _owned_marker(svc).unlink(missing_ok=True)  # started or claimed by hand: no test session stops it
        return info


def _up(svc: Service, report: Report) -> dict:
    """Start ``svc`` unless it answers already; the caller holds :func:`_lock`."""
    if healthy(svc):
        pid = _read_pid(svc)
        report(f"{svc.title} already running on {svc.endpoint}" + ("" if pid else " (not started by taishi)"))
        return {"name": svc.name, "endpoint": svc.endpoint, "pid": pid, "started": False}
    stale = _read_pid(svc)
    if stale is not None:  # ours, but not answering (still starting, or hung): give it its time first
        report(f"{svc.title} (pid {stale}) is up but not answering yet; waiting")
        if _wait_healthy(svc, stale, report):
            return {"name": svc.name, "endpoint": svc.endpoint, "pid": stale, "started": False}
        raise ServiceError(f"{svc.title} (pid {stale}) does not answer on {svc.endpoint}; "
                           f"see {svc.log_file} or run `taishi services down`")
    return _start(svc, report)


def _start(svc: Service, report: Report) -> dict:
    """Fetch (once), start ``svc`` in its own session and wait until it is healthy."""
    if _port_open(svc.port):
        raise ServiceError(f"port {svc.port} is taken by something that is not a healthy {svc.title}")
    fetch(svc, report)
    report(f"preparing {svc.title}")
    cmd = _kafka_command(svc, report) if svc.product == "kafka" else _search_command(svc, report)
    svc.state.mkdir(parents=True, exist_ok=True)
    report(f"starting {svc.title} on {svc.endpoint}")
    with open(svc.log_file, "ab") as log:
        log.write(f"\n=== taishi services up {svc.name} at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n".encode())
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=svc.state, start_new_session=True, close_fds=True)
    svc.pid_file.write_text(f"{proc.pid}\n")
    t0 = time.monotonic()
    if not _wait_healthy(svc, proc.pid, report, proc):
        _terminate(proc.pid, 10)
        svc.pid_file.unlink(missing_ok=True)
        raise ServiceError(f"{svc.title} did not come up within {svc.start_timeout:.0f}s; last lines of {svc.log_file}:\n"
                           + _log_tail(svc))
    secs = time.monotonic() - t0
    report(f"{svc.title} up on {svc.endpoint} (pid {proc.pid}, {secs:.1f}s)")
    return {"name": svc.name, "endpoint": svc.endpoint, "pid": proc.pid, "started": True, "seconds": round(secs, 1)}


def _wait_healthy(svc: Service, pid: int, report: Report, proc: subprocess.Popen | None = None) -> bool:
    deadline = time.monotonic() + svc.start_timeout
    t0 = time.monotonic()
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServiceError(f"{svc.title} exited with status {proc.returncode}; last lines of {svc.log_file}:\n"
                               + _log_tail(svc))
        if proc is None and not Path(f"/proc/{pid}").exists():
            return False
        if healthy(svc):
            return True
        report(f"waiting for {svc.title} on {svc.endpoint} ({time.monotonic() - t0:.0f}s)")
        time.sleep(0.5)
    return False


def _terminate(pid: int, timeout: float, *, crash: bool = False) -> bool:
    """SIGTERM the service's process group, SIGKILL after ``timeout`` s; True once it is gone.
    ``crash``: SIGKILL at once (no shutdown hook runs: what a power cut or an OOM kill does)."""
    for sig, wait in ((signal.SIGKILL, 10.0),) if crash else ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return True
        except PermissionError:
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)  # our child: reap it
                if done:
                    return True
            except ChildProcessError:
                pass
            if not Path(f"/proc/{pid}").exists() or _zombie(pid):
                return True
            time.sleep(0.2)
    return False


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def down(name: str, report: Report = _quiet) -> bool:
    """Stop a service this module started; True when one was stopped."""
    svc = get(name)
    with _lock():
        return _down(svc, report)


def _down(svc: Service, report: Report) -> bool:
    """Stop ``svc`` if this module started it; the caller holds :func:`_lock`."""
    pid = _read_pid(svc)
    if pid is None:
        svc.pid_file.unlink(missing_ok=True)
        if healthy(svc):
            report(f"{svc.title} on {svc.endpoint} was not started by taishi: left running")
        else:
            report(f"{svc.title} is not running")
        return False
    report(f"stopping {svc.title} (pid {pid})")
    if not _terminate(pid, 60.0):
        raise ServiceError(f"{svc.title} (pid {pid}) did not stop")
    svc.pid_file.unlink(missing_ok=True)
    _owned_marker(svc).unlink(missing_ok=True)
    report(f"{svc.title} stopped")
    return True


# --------------------------------------------------------------------------- test-session leases
def _leases(svc: Service) -> Path:
    return run_dir() / f"{svc.name}.leases"


def _owned_marker(svc: Service) -> Path:
    return run_dir() / f"{svc.name}.session-owned"


def _live_leases(svc: Service) -> list[int]:
    """Pids holding a lease on ``svc`` that still run (a crashed session's lease is dropped)."""
    out = []
    for f in sorted(_leases(svc).glob("*")):
        try:
            pid = int(f.name.split("-")[0])
        except ValueError:
            continue
        if Path(f"/proc/{pid}").exists():
            out.append(pid)
        else:
            f.unlink(missing_ok=True)
    return out


def acquire(name: str, report: Report = _quiet) -> dict:
    """``up`` for a test session: the caller holds a lease (``info["lease"]``) until :func:`release`.

    Several sessions (several shells, several developers' test runs) can share a
    service; the one that started it marks it session-owned, and the last
    session to release a session-owned service stops it. A service someone
    started with ``taishi services up`` is never stopped by a release."""
    svc = get(name)
    with _lock():  # one lock for start and lease: a release in between cannot stop it under us
        info = _up(svc, report)
        _leases(svc).mkdir(parents=True, exist_ok=True)
        lease = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        (_leases(svc) / lease).write_text(f"{time.time()}\n")
        if info["started"]:
            _owned_marker(svc).write_text(f"{os.getpid()}\n")
    return {**info, "lease": lease}


def release(name: str, lease: str, report: Report = _quiet, keep: bool = False) -> bool:
    """Drop this process's lease; stop the service if it is session-owned and nobody else holds one
    (``keep``: never stop it, and hand it over to the user as if ``taishi services up`` had started it).
    True when it was stopped."""
    svc = get(name)
    with _lock():
        (_leases(svc) / Path(lease).name).unlink(missing_ok=True)
        if keep:
            _owned_marker(svc).unlink(missing_ok=True)
            return False
        if _live_leases(svc) or not _owned_marker(svc).exists():
            return False
        _owned_marker(svc).unlink(missing_ok=True)
        return _down(svc, report)  # under the same lock: nobody acquires it in between


# --------------------------------------------------------------------------- Kafka
def _kafka_cluster_id() -> str:
    """A Kafka ``Uuid`` string: 16 random bytes, URL-safe base64 without padding. Like Kafka's own
    ``Uuid.randomUuid``, never one that starts with ``-`` (1 in 64 would, and ``kafka-storage format
    -t -x...`` reads it as an option)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def _kafka_command(svc: Service, report: Report) -> list[str]:
    """Write ``svc``'s broker configuration (one KRaft node on ``svc.port``, its controller on the
    port after it) under ``svc.state``, format its storage once, and return its command line."""
    state, home = svc.state, svc.home
    data = state / "data"
    state.mkdir(parents=True, exist_ok=True)
    props = state / "server.properties"
    props.write_text("\n".join([
        f"# written by taishi/cluster/services.py for {svc.name}",
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@{HOST}:{svc.port + 1}",
        f"listeners=PLAINTEXT://{HOST}:{svc.port},CONTROLLER://{HOST}:{svc.port + 1}",
        f"advertised.listeners=PLAINTEXT://{HOST}:{svc.port}",
        "controller.listener.names=CONTROLLER",
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "inter.broker.listener.name=PLAINTEXT",
        f"log.dirs={data}",
        "num.partitions=3",
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=3",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "transaction.state.log.num.partitions=3",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        "auto.create.topics.enable=true",
        "log.retention.hours=168",
        "",
    ]))
    log4j = state / "log4j2.yaml"
    log4j.write_text(
        "Configuration:\n"
        "  Appenders:\n"
        "    Console: {name: STDOUT, PatternLayout: {pattern: \"[%d] %p %m (%c)%n\"}}\n"
        "  Loggers:\n"
        "    Root: {level: WARN, AppenderRef: [{ref: STDOUT}]}\n"
        "    Logger:\n"
        "      - {name: kafka.server.KafkaRaftServer, level: INFO}\n"
        "      - {name: kafka.Kafka, level: INFO}\n"
    )
    cp = f"{home / 'lib'}/*"
    jvm = [java(), "-Xms256m", "-Xmx512m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
           "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true", svc.marker,
           f"-Dlog4j2.configurationFile={log4j}", f"-Dkafka.logs.dir={state / 'logs'}", "-cp", cp]
    if not (data / "meta.properties").exists():
        report("formatting Kafka storage (once)")
        shutil.rmtree(data, ignore_errors=True)
        res = subprocess.run(jvm[:1] + ["-Xmx256m", f"-Dlog4j2.configurationFile={log4j}", "-cp", cp,
                                        "kafka.tools.StorageTool", "format", "-t", _kafka_cluster_id(),
                                        "-c", str(props)],
                             capture_output=True, text=True)
        if res.returncode != 0:
            raise ServiceError("could not format the Kafka storage:\n" + res.stdout + res.stderr)
    return jvm + ["kafka.Kafka", str(props)]


class PrivateKafka:
    """A Kafka broker of one's own: the shared broker's node (:func:`_kafka_command`) on a free
    port pair, with its configuration, data, pid file and log under ``base``.

    For what must not happen to the shared broker, such as a crash: :meth:`kill` SIGKILLs the
    broker's process group (no clean shutdown, as in a power cut or an OOM kill), and
    :meth:`start` brings it back on the same port with the same data (Kafka recovers its log).
    """

    def __init__(self, base: Path, port: int | None = None, *, name: str = "kafka-private",
                 report: Report = _quiet) -> None:
        port = port or _free_port_pair()
        self.svc = Service(name, f"Kafka (private, {HOST}:{port})", "kafka", KAFKA_VERSION, port,
                           start_timeout=KAFKA.start_timeout, base=Path(base))
        self.report = report
        self.pid: int | None = None

    @property
    def endpoint(self) -> str:
        return self.svc.endpoint

    def start(self) -> dict:
        """Start the broker (formatting its storage the first time) and wait until it answers."""
        if self.running():
            raise ServiceError(f"{self.svc.title} runs already (pid {self.pid})")
        self.svc.run.mkdir(parents=True, exist_ok=True)
        with _lock():  # the server jars are shared with `up`: one fetch at a time
            fetch(self.svc, self.report)
        info = _start(self.svc, self.report)
        self.pid = info["pid"]
        return info

    def running(self) -> bool:
        return self.pid is not None and Path(f"/proc/{self.pid}").exists() and not _zombie(self.pid)

    def kill(self) -> None:
        """Crash the broker: SIGKILL to its process group, then wait until it is gone."""
        if self.pid is None:
            return
        if not _terminate(self.pid, 0, crash=True):
            raise ServiceError(f"{self.svc.title} (pid {self.pid}) survived SIGKILL")
        self.pid = None
        self._wait_closed()

    def _wait_closed(self, timeout: float = 30.0) -> None:
        """Until the ports are closed: the JVM's main thread can be a zombie while its others still exit."""
        deadline = time.monotonic() + timeout
        while _port_open(self.svc.port, 0.2) or _port_open(self.svc.port + 1, 0.2):
            if time.monotonic() > deadline:
                raise ServiceError(f"{self.svc.title}: port {self.svc.port} still open {timeout:.0f}s after the broker died")
            time.sleep(0.1)

    def stop(self) -> None:
        """Stop the broker cleanly (SIGTERM, SIGKILL after 30 s); nothing when it does not run."""
        if self.pid is None:
            return
        if not _terminate(self.pid, 30.0):
            raise ServiceError(f"{self.svc.title} (pid {self.pid}) did not stop")
        self.pid = None
        self.svc.pid_file.unlink(missing_ok=True)
        self._wait_closed()

    def log_tail(self, n: int = 25) -> str:
        return _log_tail(self.svc, n)


def _free_port_pair() -> int:
    """A port that is free, with the one after it free too (a broker's listener and its controller)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        if port < 65535 and not _port_open(port) and not _port_open(port + 1):
            try:
                with socket.socket() as s2:
                    s2.bind((HOST, port + 1))
                return port
            except OSError:
                continue
    raise ServiceError("no free pair of ports on the loopback interface")


# --------------------------------------------------------------------------- search node
def _search_command(svc: Service, report: Report) -> list[str]:
    from taishi.cluster import opensearch_dist

    return opensearch_dist.command(svc, java(), report)
