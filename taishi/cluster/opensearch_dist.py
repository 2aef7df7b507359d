"""An OpenSearch 2.19 node assembled from its Maven Central artefacts.

OpenSearch publishes the server jar (``org.opensearch:opensearch``) and its
modules (``org.opensearch.plugin:transport-netty4-client`` ...) as plain jars;
the distribution's layout around them is rebuilt here::

    <home>/lib/                       the server, its dependencies, the plugin class loader, log4j-core
    <home>/modules/<name>/            each module's jars minus what lib/ has,
                                      plugin-descriptor.properties, plugin-security.policy
    <home>/plugins/, <home>/bin/      empty (the node checks they exist)

and the node runs straight from ``org.opensearch.bootstrap.OpenSearch`` with
the JVM options of the distribution's ``jvm.options`` that matter on Java 17,
a generated ``opensearch.yml`` (loopback, single node, no security plugin) and
a console ``log4j2.properties``. The module set is the one Taishi needs: the
HTTP transport (netty4), the common analyzers and Painless (which the common
analyzers extend), and the geo module (geohash/geotile grid aggregations).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

# log4j-core is an optional dependency of the server: the version its log4j-api has
LOG4J_VERSION = "2.25.4"

# (Maven artifact, module name, plugin class, extended plugins)
MODULES = (
    ("transport-netty4-client", "transport-netty4", "org.opensearch.transport.Netty4Plugin", ""),
    ("lang-painless", "lang-painless", "org.opensearch.painless.PainlessPlugin", ""),
    ("analysis-common", "analysis-common", "org.opensearch.analysis.common.CommonAnalysisPlugin", "lang-painless"),
    # geohash_grid / geotile_grid aggregations (the dashboards' maps) live in this module since OpenSearch 2.5
    ("geo", "geo", "org.opensearch.geo.GeoModulePlugin", ""),
)

# Modules are the distribution's own code: the distribution grants them what their policies list;
# the published jars carry no policy, so they get all permissions (as the node's own lib/ has).
_POLICY = "grant {\n  permission java.security.AllPermission;\n};\n"


def assemble(home: Path, version: str, mvn_copy: Callable, report: Callable[[str], None]) -> None:
    lib = home / "lib"
    mvn_copy([f"org.opensearch:opensearch:{version}", f"org.opensearch:opensearch-plugin-classloader:{version}",
              f"org.apache.logging.log4j:log4j-core:{LOG4J_VERSION}"],
             lib, home / "pom" / "server", report)
    have = {p.name for p in lib.glob("*.jar")}
    for artifact, name, classname, extended in MODULES:
        report(f"fetching module {name}")
        work = home / "pom" / name
        jars = mvn_copy([f"org.opensearch.plugin:{artifact}:{version}"], work / "lib", work, report)
        mod = home / "modules" / name
        mod.mkdir(parents=True, exist_ok=True)
        for jar in jars:
            if jar.name not in have:
                shutil.copy2(jar, mod / jar.name)
        (mod / "plugin-descriptor.properties").write_text(
            f"description=OpenSearch module {name} (assembled by Taishi from Maven Central)\n"
            f"version={version}\nname={name}\nclassname={classname}\njava.version=11\n"
            f"opensearch.version={version}\nextended.plugins={extended}\nhas.native.controller=false\n"
            "custom.foldername=\n"
        )
        (mod / "plugin-security.policy").write_text(_POLICY)
    (home / "plugins").mkdir(exist_ok=True)
    shutil.rmtree(home / "pom", ignore_errors=True)
    report(f"assembled OpenSearch {version}: {len(have)} server jars, {len(MODULES)} modules")


def command(svc, java: str, report: Callable[[str], None]) -> list[str]:
    """Write the node's configuration under ``svc.state`` and return its command line."""
    state, home = svc.state, svc.home
    conf = state / "config"
    for d in (conf, state / "data", state / "logs", state / "tmp", home / "bin", home / "plugins"):
        d.mkdir(parents=True, exist_ok=True)
    (conf / "opensearch.yml").write_text("\n".join([
        "# written by taishi services up (taishi/cluster/opensearch_dist.py)",
        "cluster.name: taishi",
        "node.name: taishi-1",
        f"path.data: {state / 'data'}",
        f"path.logs: {state / 'logs'}",
        "network.host: 127.0.0.1",
        f"http.port: {svc.port}",
        f"transport.port: {svc.port + 100}",
        "discovery.type: single-node",
        "bootstrap.memory_lock: false",
        # a developer's disk may be fuller than the default watermarks like; never go read-only for that
        "cluster.routing.allocation.disk.threshold_enabled: false",
        "action.destructive_requires_name: true",
        "",
    ]))
    (conf / "log4j2.properties").write_text("\n".join([
        "status = error",
        "appender.console.type = Console",
        "appender.console.name = console",
        "appender.console.layout.type = PatternLayout",
        "appender.console.layout.pattern = [%d{ISO8601}][%-5p][%-25c{1.}] [%node_name]%marker %m%n",
        "rootLogger.level = warn",
        "rootLogger.appenderRef.console.ref = console",
        "logger.node.name = org.opensearch.node.Node",
        "logger.node.level = info",
        "logger.http.name = org.opensearch.http",
        "logger.http.level = info",
        "",
    ]))
    (conf / "jvm.options").write_text("# the node is started by taishi with its options on the command line\n")
    return _unprivileged(state, report) + [
        java, "-Xms768m", "-Xmx768m", "-XX:+UseG1GC", "-XX:G1ReservePercent=25",
        "-XX:InitiatingHeapOccupancyPercent=30", "-XX:+ExitOnOutOfMemoryError", "-XX:-OmitStackTraceInFastThrow",
        "-Djava.awt.headless=true", "-Dfile.encoding=UTF-8", "-Djna.nosys=true",
        "-Dio.netty.noUnsafe=true", "-Dio.netty.noKeySetOptimization=true",
        "-Dio.netty.recycler.maxCapacityPerThread=0", "-Dio.netty.allocator.numDirectArenas=0",
        "-Dlog4j.shutdownHookEnabled=false", "-Dlog4j2.disable.jmx=true", "-Dlog4j2.formatMsgNoLookups=true",
        "-Djava.locale.providers=SPI,COMPAT", f"-Djava.io.tmpdir={state / 'tmp'}", f"-Djna.tmpdir={state / 'tmp'}",
        svc.marker,
        f"-Dopensearch.path.home={home}", f"-Dopensearch.path.conf={conf}",
        "-Dopensearch.distribution.type=tar", "-Dopensearch.bundled_jdk=false",
        "-cp", f"{home / 'lib'}/*", "org.opensearch.bootstrap.OpenSearch",
    ]


def _unprivileged(state: Path, report: Callable[[str], None]) -> list[str]:
    """OpenSearch refuses to run as root: as root (CI, containers), run the node as ``nobody``.

    The node's own directory (config, data, logs, tmp) is handed to that user; the
    server jars stay root's and read-only to it.
    """
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise RuntimeError("running as root and setpriv (util-linux) is missing: cannot drop to an unprivileged user")
    uid = gid = 65534  # nobody / nogroup
    report("running the search node as user nobody (OpenSearch does not run as root)")
    for root, dirs, files in os.walk(state):
        for name in dirs + files:
            os.lchown(os.path.join(root, name), uid, gid)
    os.chown(state, uid, gid)
    return [setpriv, f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]
