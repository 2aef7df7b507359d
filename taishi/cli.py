"""``taishi``: the command line.

Every command takes ``--data-dir``, ``--rules`` and ``--config``; with none of
them the defaults in :mod:`taishi.config` apply. ``--json`` output uses ECS
field names throughout.
"""

from __future__ import annotations

import json
import os
import re
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import click
import pyarrow as pa
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from taishi import __version__
from taishi import config as config_mod

console = Console(stderr=False)
err = Console(stderr=True)

LEVEL_STYLE = {
    "critical": "bold white on red",
    "high": "bold red",
    "medium": "yellow",
    "low": "cyan",
    "informational": "dim",
}

_DURATION = re.compile(r"^(\d+)\s*([smhdw])$")


def parse_since(text: str | None) -> datetime | None:
    """``24h``, ``7d``, ``30m``, ``2w`` (ago) or an ISO-8601 time -> aware UTC datetime."""
    if not text:
        return None
    m = _DURATION.match(text.strip())
    if m:
        n, unit = int(m.group(1)), m.group(2)
        secs = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit] * n
        return datetime.now(timezone.utc) - timedelta(seconds=secs)
    from taishi.schema import parse_time

    try:
        return parse_time(text)
    except ValueError:
        raise click.BadParameter(f"{text!r}: use a duration like 24h, 7d, 30m or an ISO-8601 time")


def _cfg(ctx: click.Context) -> config_mod.Config:
    o = ctx.obj
    try:
        return config_mod.load(o["config"], data_dir=o["data_dir"], rules=o["rules"], mode=o["mode"])
    except config_mod.ConfigError as exc:
        raise click.UsageError(str(exc))


def _require_embedded(cfg: config_mod.Config) -> None:
    if cfg.mode != "embedded":
        raise click.UsageError("cluster mode is not available in this build yet; use --mode embedded")


def _json_default(o: Any) -> Any:
    if isinstance(o, datetime):
        return o.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    raise TypeError(type(o).__name__)


def dumps(obj: Any) -> str:
    return json.dumps(obj, default=_json_default, ensure_ascii=False, indent=2)


def _rows(table: pa.Table, drop_null: bool = True) -> list[dict]:
    rows = table.to_pylist()
    if drop_null:
        rows = [{k: v for k, v in r.items() if v is not None and v != []} for r in rows]
    return rows


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="taishi")
@click.option("--config", type=click.Path(path_type=Path), help="taishi.yaml to read (default: ./taishi.yaml or $TAISHI_CONFIG).")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Where the bus, store and state live (default ./taishi-data).")
@click.option("--rules", "rules", multiple=True, type=click.Path(path_type=Path), help="Rule directory or file; repeat for several (default: the shipped rules).")
@click.option("--mode", type=click.Choice(config_mod.MODES), help="Override the configured mode.")
@click.pass_context
def main(ctx: click.Context, config: Path | None, data_dir: Path | None, rules: tuple[Path, ...], mode: str | None) -> None:
    """Taishi (态势): network-security situational awareness."""
    ctx.obj = {"config": config, "data_dir": data_dir, "rules": list(rules) or None, "mode": mode}


# --------------------------------------------------------------------------- ingest
def _run_ingest(cfg: config_mod.Config, paths: list[Path], fmt: str, from_start: bool, quiet: bool,
                logsource: str | None = None):
    from taishi.pipeline import Pipeline, expand_paths

    files = expand_paths(paths)
    missing = [p for p in files if not p.exists()]
    if missing:
        raise click.BadParameter(f"no such file: {missing[0]}")
    pipe = Pipeline(cfg, bounded=True)
    total = sum(p.stat().st_size for p in files)
    try:
        if quiet:
            stats = pipe.run_files(files, fmt, from_start=from_start, logsource=logsource)
        else:
            with Progress(
                TextColumn("[bold blue]{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=err,
                transient=True,
            ) as prog:
                task = prog.add_task("ingesting", total=total)
                done_before = {"base": 0, "file": None}

                def progress(path: Path, pos: int) -> None:
                    if done_before["file"] != path:
                        if done_before["file"] is not None:
                            done_before["base"] += done_before["file"].stat().st_size
                        done_before["file"] = path
                    prog.update(task, completed=min(total, done_before["base"] + pos), description=path.name[:30])

                stats = pipe.run_files(files, fmt, from_start=from_start, progress=progress, logsource=logsource)
        store_stats = pipe.store.stats()
    finally:
        pipe.close()
    return stats, store_stats


def _run_ingest_cluster(cfg: config_mod.Config, paths: list[Path], fmt: str, from_start: bool, quiet: bool,
                        logsource: str | None = None):
    """Cluster mode: files -> Kafka (a progress bar), then the Spark jobs until the input is consumed."""
    from taishi.cluster import runner
    from taishi.pipeline import expand_paths

    files = expand_paths(paths)
    missing = [p for p in files if not p.exists()]
    if missing:
        raise click.BadParameter(f"no such file: {missing[0]}")
    if quiet:
        return runner.ingest(cfg, files, fmt, from_start=from_start, logsource=logsource)
    total = sum(p.stat().st_size for p in files)
    with Progress(TextColumn("[bold blue]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=err, transient=True) as prog:
        task = prog.add_task("to Kafka", total=total)
        sizes = {p: p.stat().st_size for p in files}
        done: dict[Path, int] = {}

        def progress(path: Path, pos: int) -> None:
            done[path] = min(pos, sizes.get(path, pos))
            prog.update(task, completed=sum(done.values()), description=f"to Kafka: {path.name[:24]}")

        def phase(text: str) -> None:
            prog.update(task, completed=total, description=text)

        return runner.ingest(cfg, files, fmt, from_start=from_start, logsource=logsource, progress=progress,
                             phase=phase)


def _count_table(title: str, what: str, unit: str, rows: list[tuple]) -> None:
    """A small table of (name, count[, bar]) rows; nothing when there are none."""
    if not rows:
        return
    t = Table(title=title, title_justify="left")
    t.add_column(what)
    t.add_column(unit, justify="right")
    if len(rows[0]) > 2:
        t.add_column("")
    for name, count, *rest in rows:
        t.add_row(str(name), f"{count:,}", *rest)
    console.print(t)


def print_summary(stats, store_stats: dict, title: str = "Ingest summary") -> None:
    d = stats.as_dict()
    t = Table(title=title, show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column(justify="right")
    t.add_row("files", str(d["files"]))
    t.add_row("records read", f"{d['records']:,}")
    t.add_row("events", f"{d['events']:,}  ({d['events_stored']:,} new in store)")
    t.add_row("alerts", f"{d['alerts']:,}  ({d['alerts_stored']:,} new in store)")
    t.add_row("dead letters", f"{d['deadletters']:,}")
    t.add_row("late events", f"{d['late_events']:,}")
    rate = d["records"] / d["seconds"] if d["seconds"] else 0
    t.add_row("time", f"{d['seconds']:.2f} s  ({rate:,.0f} records/s)")
    console.print(t)
    _count_table("Events by dataset", "dataset", "events",
                 sorted(d["events_by_dataset"].items(), key=lambda kv: -kv[1]))
    if d["alerts_by_level"]:
        from taishi.schema import LEVELS

        top = max(d["alerts_by_level"].values())
        _count_table("Alerts by level", "level", "alerts",
                     [(f"[{LEVEL_STYLE[lv]}]{lv}[/]", n, "█" * max(1, round(30 * n / top)))
                      for lv in reversed(LEVELS) if (n := d["alerts_by_level"].get(lv))])
    _count_table("Alerts by rule", "rule", "alerts",
                 sorted(d["alerts_by_rule"].items(), key=lambda kv: (-kv[1], kv[0])))
    _count_table("Alerts by ATT&CK technique", "technique", "alerts", sorted(d["alerts_by_technique"].items()))
    _count_table("Dead letters by reason", "reason", "records",
                 sorted(d["deadletter_reasons"].items(), key=lambda kv: -kv[1]))
    console.print(
        f"[dim]store now holds {store_stats.get('events', 0):,} events, "
        f"{store_stats.get('alerts', 0):,} alerts, {store_stats.get('deadletters', 0):,} dead letters[/]"
    )


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--format", "fmt", default="auto", show_default=True,
              type=click.Choice(["auto", "zeek", "suricata", "syslog", "cef", "json", "pcap"]), help="Input format.")
@click.option("--from-start", is_flag=True, help="Ignore saved file checkpoints and read the files from the beginning.")
@click.option("--logsource", metavar="PRODUCT/CATEGORY/SERVICE",
              help="Tag the events with a Sigma logsource (json, syslog, cef, suricata), e.g. windows/process_creation/.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def ingest(ctx: click.Context, paths: tuple[Path, ...], fmt: str, from_start: bool, logsource: str | None,
           as_json: bool) -> None:
    """Run files (or directories) once through the whole pipeline and summarise.

    Files resume from their checkpoint, so running the same command again after
    an interruption picks up where it stopped; --from-start re-reads them
    (events and alerts keep their ids, so nothing is stored twice).
    With --mode cluster (or mode: cluster) the files go to Kafka and the Spark
    jobs run until they have consumed them; the summary is the same.
    """
    cfg = _cfg(ctx)
    if logsource:
        from taishi.pipeline import check_logsource

        try:
            check_logsource(logsource)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--logsource")
    run = _run_ingest_cluster if cfg.mode == "cluster" else _run_ingest
    stats, store_stats = run(cfg, list(paths), fmt, from_start, quiet=as_json, logsource=logsource)
    if as_json:
        click.echo(dumps({**stats.as_dict(), "store": store_stats}))
    else:
        print_summary(stats, store_stats)


# --------------------------------------------------------------------------- queries
def _open_store(cfg: config_mod.Config):
    from taishi.store import Store

    return Store(cfg.data_dir)


def _query_or_exit(fn, *args, **kwargs):
    from taishi.query import QueryError

    try:
        return fn(*args, **kwargs)
    except QueryError as exc:
        err.print(f"[red]query error:[/] {exc}")
        sys.exit(2)


def _fetch(ctx: click.Context, method: str, query: str, **kwargs: Any) -> list[dict]:
    """Run one store search for a CLI command; a bad query exits with status 2."""
    cfg = _cfg(ctx)
    if cfg.mode == "cluster":  # the search node (taishi.cluster.search): same methods, same query syntax
        from taishi.cluster.search import SearchStore, SearchStoreError

        try:
            store = SearchStore.from_config(cfg)
        except SearchStoreError as exc:
            err.print(f"[red]error:[/] {exc}")
            sys.exit(1)
    else:
        _require_embedded(cfg)
        store = _open_store(cfg)
    try:
        return _rows(_query_or_exit(getattr(store, method), query, **kwargs))
    finally:
        store.close()


def _emit(rows: list[dict], as_json: bool, title: str, columns: tuple[str, ...], cells) -> None:
    """Print rows as JSON, or as a table whose cells ``cells(row)`` gives."""
    if as_json:
        click.echo(dumps(rows))
        return
    t = Table(title=title, title_justify="left")
    for col in columns:
        t.add_column(col, overflow="fold")
    for r in rows:
        t.add_row(*cells(r))
    console.print(t)


@main.command()
@click.argument("query", required=False, default="")
@click.option("--since", default="24h", show_default=True, help="Only alerts from this far back (24h, 7d, ISO time, or 'all').")
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def alerts(ctx: click.Context, query: str, since: str, limit: int, as_json: bool) -> None:
    """List alerts matching a Lucene QUERY (e.g. 'rule.level:high AND source.ip:203.0.113.0/24')."""
    rows = _fetch(ctx, "search_alerts", query, since=None if since == "all" else parse_since(since), limit=limit)

    def cells(r: dict) -> tuple[str, ...]:
        lvl = r.get("rule.level", "")
        return (_fmt_time(r.get("@timestamp")), f"[{LEVEL_STYLE.get(lvl, '')}]{lvl}[/]", r.get("rule.name", ""),
                str(r.get("source.ip", "")), str(r.get("destination.ip", "")),
                ",".join(r.get("threat.technique.id", [])), str(r.get("event.count", "")))

    _emit(rows, as_json, f"{len(rows)} alert(s)",
          ("time", "level", "rule", "source", "destination", "technique", "events"), cells)


def _fmt_time(v: Any) -> str:
    return v.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if isinstance(v, datetime) else str(v or "")


@main.command()
@click.argument("query")
@click.option("--since", default=None, help="Only events from this far back (24h, 7d, ISO time).")
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def search(ctx: click.Context, query: str, since: str | None, limit: int, as_json: bool) -> None:
    """Search events with a Lucene QUERY (e.g. 'event.dataset:zeek.dns AND dns.question.name:*.cn')."""
    rows = _fetch(ctx, "search_events", query, since=parse_since(since), limit=limit)

    def cells(r: dict) -> tuple[str, ...]:
        src = f"{r.get('source.ip', '')}:{r.get('source.port', '')}".strip(":")
        dst = f"{r.get('destination.ip', '')}:{r.get('destination.port', '')}".strip(":")
        summary = r.get("message") or r.get("dns.question.name") or r.get("url.original") or r.get("event.action") or ""
        return (_fmt_time(r.get("@timestamp")), r.get("event.dataset", ""), src, dst, str(summary)[:80])

    _emit(rows, as_json, f"{len(rows)} event(s)", ("time", "dataset", "source", "destination", "summary"), cells)


@main.command()
@click.argument("query", required=False, default="")
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def deadletters(ctx: click.Context, query: str, limit: int, as_json: bool) -> None:
    """List dead letters (bad input, with where it came from and why)."""
    rows = _fetch(ctx, "search_deadletters", query, limit=limit)
    _emit(rows, as_json, f"{len(rows)} dead letter(s)", ("source", "offset", "stage", "reason", "record"),
          lambda r: (str(r.get("taishi.source", "")), str(r.get("log.offset", "")), r.get("stage", ""),
                     r.get("reason", ""), str(r.get("event.original", ""))[:60]))


# --------------------------------------------------------------------------- rules
@main.group()
def rules() -> None:
    """List, check and test the loaded rules."""


def _ruleset(ctx: click.Context):
    from detect.sigma import RuleSet

    cfg = _cfg(ctx.find_root())
    return cfg, RuleSet.load(cfg.rules)


@rules.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def rules_list(ctx: click.Context, as_json: bool) -> None:
    """The loaded rules."""
    _, rs = _ruleset(ctx)
    rows = [r.describe() for r in rs.all_rules()]
    if as_json:
        click.echo(dumps(rows))
        return
    t = Table(title=f"{len(rows)} rule(s)", title_justify="left")
    for col in ("level", "title", "type", "logsource", "ATT&CK"):
        t.add_column(col, overflow="fold")
    for r in sorted(rows, key=lambda r: r["title"]):
        lvl = r.get("level") or ""
        t.add_row(f"[{LEVEL_STYLE.get(lvl, '')}]{lvl}[/]", r["title"], r["type"], r.get("logsource", ""),
                  ",".join(r.get("techniques", [])))
    console.print(t)
    for path, reason in rs.errors:
        err.print(f"[red]not loaded[/] {path}: {reason}")


@rules.command("check")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def rules_check(ctx: click.Context, as_json: bool) -> None:
    """Report rules that do not load, unsupported constructs and unmapped fields."""
    _, rs = _ruleset(ctx)
    issues = rs.check()
    loaded = len(rs.all_rules())
    failed = len(rs.errors)
    if as_json:
        click.echo(dumps({"loaded": loaded, "failed": failed,
                          "issues": [i.as_dict() for i in issues],
                          "errors": [{"path": p, "reason": r} for p, r in rs.errors]}))
    else:
        t = Table(title=f"{loaded} rule(s) loaded, {failed} not loaded, {len(issues)} issue(s)", title_justify="left")
        for col in ("severity", "rule", "issue"):
            t.add_column(col, overflow="fold")
        for i in issues:
            d = i.as_dict()
            t.add_row("[red]error[/]" if d["severity"] == "error" else "[yellow]warning[/]", str(d.get("rule") or d.get("path")), d["message"])
        console.print(t)
    if any(i.as_dict()["severity"] == "error" for i in issues) or failed:
        sys.exit(1)


@rules.command("test")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def rules_test(ctx: click.Context, as_json: bool) -> None:
    """Run the example events kept beside each rule (*.tests.yml)."""
    from detect.rule_tests import run_rule_tests

    cfg = _cfg(ctx.find_root())
    results = run_rule_tests(cfg.rules)
    failed = [r for r in results if not r.passed]
    if as_json:
        click.echo(dumps([r.as_dict() for r in results]))
    else:
        for r in results:
            mark = "[green]PASS[/]" if r.passed else "[red]FAIL[/]"
            console.print(f"{mark} {r.rule} :: {r.case}" + ("" if r.passed else f" — {r.detail}"))
        console.print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    if failed or not results:
        sys.exit(1)


# --------------------------------------------------------------------------- model (anomaly scoring)
@main.group()
def model() -> None:
    """Train and evaluate the anomaly-scoring models (detect.anomaly)."""


_ALGORITHMS = ("isolation_forest", "lof", "random_forest", "gradient_boosting")


@model.command("train")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--algorithm", type=click.Choice(_ALGORITHMS), default="isolation_forest", show_default=True)
@click.option("--target-fpr", type=float, default=0.01, show_default=True,
              help="False-positive rate on held-out benign training rows that sets the threshold.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Artefact path without suffix (default <data-dir>/models/<kind>-<algorithm>).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def model_train(ctx: click.Context, paths: tuple[Path, ...], algorithm: str, target_fpr: float, out: Path | None,
                as_json: bool) -> None:
    """Fit a model on Zeek conn logs, the DNS qname CSV or CIC-IDS2017 CSVs; write .joblib + .json."""
    try:
        from detect.anomaly.evaluate import train
    except ImportError as e:  # scikit-learn is the [anomaly] extra
        raise click.ClickException(f"{e}; install with: pip install 'taishi[anomaly]'")
    cfg = _cfg(ctx.find_root())
    try:
        m = train(list(paths), algorithm=algorithm, target_fpr=target_fpr)
    except ValueError as e:
        raise click.ClickException(str(e))
    out = out or cfg.data_dir / "models" / f"{m.kind}-{m.algorithm}"
    _, side = m.save(out)
    meta = json.loads(side.read_text())
    if as_json:
        click.echo(dumps(meta))
        return
    console.print(f"[green]saved[/] {side.with_suffix('.joblib')} ({meta['model_version']}): "
                  f"{meta['n_fit']} rows fitted, threshold {meta['threshold']:.4f} at FPR {target_fpr:.1%}")


@model.command("eval")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--train", "train_paths", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Training files (another capture / the source's train split); default: time split of PATHS.")
@click.option("--algorithm", "algorithms", multiple=True, type=click.Choice(_ALGORITHMS),
              default=("isolation_forest", "random_forest"), show_default=True)
@click.option("--target-fpr", type=float, default=0.01, show_default=True)
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Score-over-time PNG.")
@click.option("--json", "as_json", is_flag=True)
def model_eval(paths: tuple[Path, ...], train_paths: tuple[Path, ...], algorithms: tuple[str, ...], target_fpr: float,
               plot: Path | None, as_json: bool) -> None:
    """ROC AUC, precision/recall at the threshold, recall per attack family on labelled files."""
    try:
        from detect.anomaly.evaluate import evaluate
    except ImportError as e:
        raise click.ClickException(f"{e}; install with: pip install 'taishi[anomaly]'")
    try:
        r = evaluate(list(paths), train=list(train_paths) or None, algorithms=algorithms, target_fpr=target_fpr, plot=plot)
    except ValueError as e:
        raise click.ClickException(str(e))
    if as_json:
        click.echo(dumps(r))
        return
    t = Table(title=f"{r['dataset']}: {r['split']} (train {r['n_train']}, test {r['n_test']})", title_justify="left")
    for col in ("model", "AUC", "precision", "recall", "false alerts/10k benign", "weakest family"):
        t.add_column(col)
    for alg, m in r["models"].items():
        if "auc" not in m:
            t.add_row(alg, "-", "-", "-", "-", m.get("skipped", ""))
            continue
        fam = min(m["recall_per_family"].items(), key=lambda kv: kv[1]["recall"], default=("-", {"recall": 0}))
        t.add_row(alg, f"{m['auc']:.4f}", f"{m['precision']:.4f}", f"{m['recall']:.4f}",
                  str(m["false_alerts_per_10k_benign"]), f"{fam[0]} ({fam[1]['recall']:.2f})")
    console.print(t)
    if r.get("plot"):
        console.print(f"plot: {r['plot']}")


# --------------------------------------------------------------------------- serve / demo
def _serve(cfg: config_mod.Config, host: str, port: int) -> None:
    import uvicorn

    from taishi.api.app import create_app
    from taishi.api.auth import UserDB

    token = UserDB(cfg.data_dir / "users.json").ensure_admin()
    app = create_app(cfg.data_dir, cfg.rules, cfg=cfg)  # mode: cluster serves the search node's store
    console.print(f"[bold green]Taishi console[/] at http://{host}:{port}/   (API docs: http://{host}:{port}/docs)")
    if cfg.mode == "cluster":
        search = (cfg.cluster or {}).get("search") or {}
        console.print(f"mode [bold]cluster[/]: data from the search node {search.get('url', 'http://127.0.0.1:9200')} "
                      f"(indices {search.get('index_prefix', 'taishi')}-*); users, triage and audit in {cfg.data_dir}")
    if token:
        console.print(f"admin token (shown once, keep it): [bold]{token}[/]")
    else:
        console.print("log in with an existing token; create one with [bold]taishi users add NAME --role analyst[/]")
    uvicorn.run(app, host=host, port=port, log_level="warning")


@main.command()
@click.option("--host", default=None, help="Interface to listen on (default 127.0.0.1).")
@click.option("--port", default=None, type=int, help="Port (default 8765).")
@click.pass_context
def serve(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Serve the HTTP API and the console (with mode: cluster, over the search node)."""
    cfg = _cfg(ctx)
    _serve(cfg, host or cfg.api_host, port or cfg.api_port)


@main.command()
@click.option("--no-serve", is_flag=True, help="Print the summary and exit instead of serving the console.")
@click.option("--seed", default=7, show_default=True, help="Random seed of the generated campaign.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON (implies --no-serve).")
@click.pass_context
def demo(ctx: click.Context, no_serve: bool, seed: int, as_json: bool) -> None:
    """Generate an attack campaign on a simulated CII network, detect it, and show it."""
    from taishi.demo import generate_campaign

    cfg = _cfg(ctx)
    _require_embedded(cfg)
    out = cfg.data_dir / "demo-logs"
    manifest = generate_campaign(out, seed=seed)
    if not as_json:
        console.print(f"[bold]Generated a campaign against a simulated CII network[/] in {out}")
    _demo_inventory(cfg, quiet=as_json)
    stats, store_stats = _run_ingest(cfg, list(manifest.files), "auto", from_start=True, quiet=as_json)
    stages = _stage_report(cfg, manifest)
    if as_json:
        click.echo(dumps({**stats.as_dict(), "store": store_stats, "stages": stages}))
        return
    print_summary(stats, store_stats, title="Demo summary")
    t = Table(title="Campaign stages and the alerts they raised", title_justify="left")
    for col, kw in (("#", {}), ("stage", {"no_wrap": True}), ("ATT&CK", {"no_wrap": True}),
                    ("attacker → victim", {}), ("alerts", {"justify": "right"}), ("rules that fired", {})):
        t.add_column(col, **kw)
    for i, s in enumerate(stages, 1):
        ok = "[green]✔[/]" if s["alerts"] else "[red]✘[/]"
        victims = s["victim"].split(", ")
        victim = victims[0] + (f" (+{len(victims) - 1})" if len(victims) > 1 else "")
        t.add_row(str(i), f"{ok} {s['name'].replace('_', ' ')}", s["technique"], f"{s['attacker']} → {victim}",
                  str(s["alerts"]), "\n".join(s["rules"]))
    console.print(t)
    prog = _prog()
    console.print(f"Look further: [bold]{prog} --data-dir {cfg.data_dir} alerts --since all[/]  ·  "
                  f"[bold]{prog} --data-dir {cfg.data_dir} search 'source.ip:{stages[0]['attacker'] if stages else '*'}'[/]")
    if not no_serve:
        url = f"http://{cfg.api_host}:{cfg.api_port}/"
        console.print(f"The console shows the campaign: [bold]{url}#/overview[/] (posture index, alerts by severity, "
                      f"sources, ATT&CK heat map), [bold]{url}#/incidents[/] (the incident and its traceback graph), "
                      f"[bold]{url}#/assets[/] (the CII assets under pressure). Sign in with the admin token below.")
        _serve(cfg, cfg.api_host, cfg.api_port)


def _demo_inventory(cfg: config_mod.Config, quiet: bool) -> None:
    """Import the simulated network as the CII inventory (systems per zone, assets per host) unless
    an inventory exists: events are then enriched with their assets and the console shows posture
    per asset, sector and region."""
    import yaml

    from compliance.inventory import Inventory
    from taishi.demo import demo_inventory

    with Inventory.editing(cfg.data_dir) as inv:
        if inv.systems:
            return
        res = inv.import_yaml(yaml.safe_dump(demo_inventory(), allow_unicode=True), who="taishi demo")
    if not quiet:
        console.print(f"CII inventory: {len(res.added)} systems and assets of the demo network imported")


def _prog() -> str:
    """How the user ran us (``.venv/bin/taishi`` after ``make demo``), for hints we print."""
    arg0 = sys.argv[0] if sys.argv else "taishi"
    if os.path.basename(arg0) == "taishi" and os.sep in arg0:
        rel = os.path.relpath(arg0)
        return rel if not rel.startswith("..") else arg0
    return "taishi"


def _quote(value: str) -> str:
    """Escape a value for a quoted Lucene term."""
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _stage_report(cfg: config_mod.Config, manifest) -> list[dict]:
    """For each campaign stage, the alerts whose rule the stage expects, inside its time window."""
    store = _open_store(cfg)
    out = []
    try:
        for st in manifest.stages:
            rule_ids = list(st.expected_rules)
            fired: dict[str, int] = {}
            total = 0
            for rid in rule_ids:
                q = f'rule.id:"{_quote(rid)}"'
                n = store.count("alerts", q)
                if n:
                    tbl = store.search_alerts(q, limit=1)
                    fired[tbl.column("rule.name")[0].as_py()] = n
                    total += n
            out.append({"name": st.name, "technique": st.technique, "attacker": st.attacker, "victim": st.victim,
                        "start": st.start, "end": st.end, "expected_rules": rule_ids, "alerts": total,
                        "rules": sorted(fired)})
    finally:
        store.close()
    return out


@main.command()
@click.option("--syslog-udp", metavar="HOST:PORT", help="Receive syslog over UDP.")
@click.option("--syslog-tcp", metavar="HOST:PORT", help="Receive syslog over TCP (newline or octet-counted frames).")
@click.option("--syslog-tls", metavar="HOST:PORT", help="Receive syslog over TLS (RFC 5425); needs --tls-cert/--tls-key.")
@click.option("--netflow-udp", metavar="HOST:PORT", help="Receive NetFlow v5/v9 and IPFIX over UDP.")
@click.option("--capture", "capture_if", metavar="IFACE", help="Capture packets live on this interface (flows + app events).")
@click.option("--bpf", metavar="FILTER", help="BPF capture filter for --capture (e.g. 'not port 22').")
@click.option("--tls-cert", type=click.Path(path_type=Path, exists=True))
@click.option("--tls-key", type=click.Path(path_type=Path, exists=True))
@click.option("--metrics", "metrics_addr", metavar="HOST:PORT", help="Serve Prometheus metrics at http://HOST:PORT/metrics.")
@click.option("--duration", type=float, help="Stop after this many seconds (default: until interrupted).")
@click.pass_context
def run(ctx: click.Context, syslog_udp, syslog_tcp, syslog_tls, netflow_udp, capture_if, bpf, tls_cert, tls_key,
        metrics_addr, duration) -> None:
    """Run the collectors and the streaming pipeline until interrupted.

    Listeners come from the flags or from taishi.yaml's `collectors:` section.
    Correlation runs on event time with the configured allowed lateness; state
    is checkpointed, so a restart continues open windows. With mode: cluster
    the collectors produce to Kafka and the Spark jobs run continuously.
    """
    import signal
    import threading
    import time as _time

    from ingest.collectors.netflow import NetflowCollector
    from ingest.collectors import Listener
    from ingest.collectors.syslog import SyslogCollector
    from taishi.pipeline import Pipeline

    cfg = _cfg(ctx)
    conf = dict(cfg.collectors.get("syslog") or {})
    for proto, flag in (("udp", syslog_udp), ("tcp", syslog_tcp), ("tls", syslog_tls)):
        if flag:
            conf[proto] = flag
    listeners = [Listener.parse(p, conf[p]) for p in ("udp", "tcp", "tls") if conf.get(p)]
    nf_conf = dict(cfg.collectors.get("netflow") or {})
    if netflow_udp:
        nf_conf["udp"] = netflow_udp
    nf_listeners = [Listener.parse("udp", nf_conf["udp"])] if nf_conf.get("udp") else []
    cap_conf = dict(cfg.collectors.get("capture") or {})
    if capture_if:
        cap_conf["interface"] = capture_if
    if bpf is not None:
        cap_conf["bpf"] = bpf
    if not listeners and not nf_listeners and not cap_conf.get("interface"):
        raise click.UsageError("no collector configured: give --syslog-udp/--syslog-tcp/--syslog-tls/--netflow-udp/"
                               "--capture or a collectors: section")
    cert = tls_cert or (Path(conf["cert"]) if conf.get("cert") else None)
    key = tls_key or (Path(conf["key"]) if conf.get("key") else None)
    if cfg.mode == "cluster":
        from taishi.cluster.runner import run_stream

        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        click.echo(dumps(run_stream(cfg, listeners, nf_listeners, certfile=cert, keyfile=key, duration=duration,
                                    stop=stop, report=lambda text: err.print(f"[dim]{text}[/]"))))
        return
    pipe = Pipeline(cfg)
    collectors: dict = {}
    if listeners:
        collectors["syslog"] = SyslogCollector(pipe.bus, listeners, certfile=cert, keyfile=key).start()
    if nf_listeners:
        collectors["netflow"] = NetflowCollector(pipe.bus, nf_listeners).start()
    if cap_conf.get("interface"):
        from ingest.collectors.capture import CaptureCollector

        opts = {k: cap_conf[k] for k in ("idle_timeout", "active_timeout", "decode_as", "max_flows", "snaplen")
                if k in cap_conf}
        collectors["capture"] = CaptureCollector(pipe.bus, str(cap_conf["interface"]), bpf=str(cap_conf.get("bpf") or ""),
                                                 **opts).start()
    for kind, col in collectors.items():
        for proto, (host, port) in col.bound.items():
            if proto == "capture":
                console.print(f"capturing on {host}" + (f" (bpf: {col.bpf})" if col.bpf else ""))
                continue
            console.print(f"listening for {kind} on {proto}://{host}:{port}")
    collector = next(iter(collectors.values()))  # the summary's "collector": syslog when it runs
    metrics_addr = metrics_addr or cfg.collectors.get("metrics")
    if metrics_addr:
        _serve_metrics(metrics_addr, lambda: "".join(c.prometheus() for c in collectors.values()) + _pipeline_metrics(pipe))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    deadline = _time.monotonic() + duration if duration else None
    last_report = 0.0
    try:
        while not stop.is_set() and (deadline is None or _time.monotonic() < deadline):
            pipe.drain()
            if _time.monotonic() - last_report > 10:
                ms = [c.metrics() for c in collectors.values()]
                err.print(f"[dim]received {sum(m['received'] for m in ms):,}  dropped {sum(m['dropped'] for m in ms):,}  "
                          f"dead letters {sum(m['deadlettered'] for m in ms):,}  "
                          f"events {pipe.stats.events:,}  alerts {len(pipe.stats.alert_ids):,}[/]")
                last_report = _time.monotonic()
            stop.wait(0.5)
    finally:
        for col in collectors.values():
            col.stop()
        pipe.drain()
        pipe._save_detector()
        pipe.close()
    extra = {kind: c.metrics() for kind, c in collectors.items() if c is not collector}
    click.echo(dumps({"collector": collector.metrics(), **extra, **pipe.stats.as_dict()}))


def _pipeline_metrics(pipe) -> str:
    lines = ["# TYPE taishi_pipeline_events_total counter", f"taishi_pipeline_events_total {pipe.stats.events}",
             "# TYPE taishi_pipeline_alerts_total counter", f"taishi_pipeline_alerts_total {len(pipe.stats.alert_ids)}",
             "# TYPE taishi_pipeline_deadletters_total counter", f"taishi_pipeline_deadletters_total {pipe.stats.deadletters}",
             "# TYPE taishi_bus_lag gauge"]
    for topic in pipe.bus.topics():
        for group in pipe.bus.groups():
            if (pipe.bus.root / "offsets" / group / topic).exists():
                lines.append(f'taishi_bus_lag{{topic="{topic}",group="{group}"}} {pipe.bus.lag(group, topic)}')
    return "\n".join(lines) + "\n"


def _serve_metrics(addr: str, render) -> None:
    """Prometheus text exposition on http://addr/metrics, in a daemon thread."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    host, _, port = addr.rpartition(":")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            if self.path != "/metrics":
                self.send_error(404)
                return
            body = render().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    srv = ThreadingHTTPServer((host or "127.0.0.1", int(port)), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    console.print(f"metrics at http://{host or '127.0.0.1'}:{srv.server_address[1]}/metrics")


# --------------------------------------------------------------------------- admin
@main.group()
def users() -> None:
    """Manage API users and their tokens."""


@users.command("add")
@click.argument("name")
@click.option("--role", required=True, type=click.Choice(["analyst", "responder", "auditor", "admin"]))
@click.pass_context
def users_add(ctx: click.Context, name: str, role: str) -> None:
    """Create a user and print its token (shown once)."""
    from taishi.api.auth import AuthError, UserDB

    cfg = _cfg(ctx.find_root())
    try:
        token = UserDB(cfg.data_dir / "users.json").add_user(name, role)
    except (AuthError, ValueError) as exc:
        raise click.ClickException(str(exc))
    click.echo(token)


@users.command("list")
@click.pass_context
def users_list(ctx: click.Context) -> None:
    from taishi.api.auth import UserDB

    cfg = _cfg(ctx.find_root())
    for u in UserDB(cfg.data_dir / "users.json").list_users():
        click.echo(f"{u.name}\t{u.role}")


@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Bus topics and consumer lag, store contents."""
    from taishi.bus import Bus

    cfg = _cfg(ctx)
    bus = Bus(cfg.bus_dir)
    topics = {t: {"end": bus.end_offset(t), **{f"lag.{g}": bus.lag(g, t) for g in bus.groups() if (cfg.bus_dir / 'offsets' / g / t).exists()}}
              for t in bus.topics()}
    store = _open_store(cfg)
    try:
        st = store.stats()
    finally:
        store.close()
    doc = {"mode": cfg.mode, "data_dir": str(cfg.data_dir), "topics": topics, "store": st}
    if as_json:
        click.echo(dumps(doc))
        return
    console.print(f"mode [bold]{cfg.mode}[/], data in {cfg.data_dir}")
    t = Table(title="Bus topics", title_justify="left")
    t.add_column("topic")
    t.add_column("records", justify="right")
    t.add_column("consumer lag")
    for name, info in topics.items():
        t.add_row(name, f"{info['end']:,}", ", ".join(f"{k[4:]}={v}" for k, v in info.items() if k.startswith("lag.")))
    console.print(t)
    console.print(f"store: {st}")


@main.command()
@click.pass_context
def retention(ctx: click.Context) -> None:
    """Delete stored rows older than the configured retention, and consumed bus segments."""
    from taishi.bus import Bus

    cfg = _cfg(ctx)
    store = _open_store(cfg)
    try:
        deleted = store.apply_retention(cfg.retention_days)
    finally:
        store.close()
    segs = Bus(cfg.bus_dir).compact()
    click.echo(dumps({"deleted_rows": deleted, "deleted_bus_segments": segs, "retention_days": cfg.retention_days}))


# --------------------------------------------------------------------------- compliance
@main.group()
def inventory() -> None:
    """The CII inventory: systems and assets (data_dir/compliance/inventory.json)."""


def _who() -> str:
    return os.environ.get("TAISHI_USER") or os.environ.get("USER") or "cli"


@inventory.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--kind", type=click.Choice(["system", "asset"]),
              help="What the CSV rows are (CSV only; YAML holds both).")
@click.option("--who", default=None, help="Recorded in the change log (default $TAISHI_USER or $USER).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def inventory_import(ctx: click.Context, path: Path, kind: str | None, who: str | None, as_json: bool) -> None:
    """Import systems/assets from CSV or YAML. Bad rows are reported (row, field, reason)
    and skipped; every valid row is applied. Exit status 1 when any row was rejected."""
    from compliance.inventory import Inventory

    cfg = _cfg(ctx)
    is_yaml = path.suffix.lower() in (".yaml", ".yml")
    if not is_yaml and kind is None:
        raise click.UsageError("--kind system|asset is required for CSV")
    with Inventory.editing(cfg.data_dir) as inv:  # locked from read to write
        if is_yaml:
            res = inv.import_yaml(path, who=who or _who())
        else:
            res = inv.import_csv(path, kind, who=who or _who())
    out = {"added": res.added, "updated": res.updated, "unchanged": len(res.unchanged),
           "errors": [{"kind": e.kind, "row": e.row, "field": e.field, "reason": e.reason} for e in res.errors]}
    if cfg.mode == "cluster":  # the search node's copy follows the file
        from taishi.commands.inventory_publish import publish_inventory

        out["published"], _ = publish_inventory(cfg)
    if as_json:
        click.echo(dumps(out))
    else:
        console.print(f"added {len(res.added)}, updated {len(res.updated)}, unchanged {len(res.unchanged)}, "
                      f"rejected {len(res.errors)}")
        for e in res.errors:
            err.print(f"[red]{e}[/]")
    if res.errors:
        sys.exit(1)


@inventory.command("export")
@click.option("--format", "fmt", type=click.Choice(["yaml", "csv"]), default="yaml", show_default=True)
@click.option("--kind", type=click.Choice(["system", "asset"]), default="system", show_default=True,
              help="Which records (CSV only).")
@click.pass_context
def inventory_export(ctx: click.Context, fmt: str, kind: str) -> None:
    """Print the inventory as YAML (systems and assets) or CSV (one kind)."""
    from compliance.inventory import Inventory

    inv = Inventory.open(_cfg(ctx).data_dir)
    click.echo(inv.export_yaml() if fmt == "yaml" else inv.export_csv(kind), nl=False)


@inventory.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def inventory_list(ctx: click.Context, as_json: bool) -> None:
    """List CII systems with their assets."""
    from dataclasses import asdict

    from compliance.inventory import Inventory

    inv = Inventory.open(_cfg(ctx).data_dir)
    rows = [{**asdict(s), "assets": [asdict(a) for a in inv.assets_of(s.cii_id)]}
            for s in sorted(inv.systems.values(), key=lambda s: s.cii_id)]

    def cells(r: dict) -> tuple[str, ...]:
        return (r["cii_id"], r["name"], r["sector"], str(r["mlps_level"]), r["zone"], ", ".join(r["cidrs"]),
                ", ".join(a["asset_id"] for a in r["assets"]), "yes" if r["reidentify"] else "")

    _emit(rows, as_json, f"{len(rows)} CII system(s)",
          ("id", "name", "sector", "level", "zone", "CIDRs", "assets", "re-identify"), cells)


@main.group()
def compliance() -> None:
    """GB/T 22239-2019 checks (rules/compliance) over the stored events."""


def build_compliance_report(cfg: config_mod.Config, level: int, systems: tuple[str, ...]):
    """The compliance report over the embedded store and the inventory (exit 2 when either is unusable)."""
    from compliance.inventory import Inventory
    from compliance.report import build

    inv = Inventory.open(cfg.data_dir)
    if not inv.systems:
        err.print("[red]the inventory is empty:[/] taishi inventory import FILE first")
        sys.exit(2)
    store = _open_store(cfg)
    try:
        return build(store, inv, cfg, level=level, systems=list(systems) or None)
    except ValueError as e:
        err.print(f"[red]{e}[/]")
        sys.exit(2)
    finally:
        store.close()


@compliance.command("report")
@click.option("--level", type=click.IntRange(1, 5), default=3, show_default=True, help="MLPS level to report against.")
@click.option("--system", "systems", multiple=True, help="CII system id; repeat for several (default: all).")
@click.option("--format", "fmt", type=click.Choice(["html", "csv", "pdf", "json"]), default="html", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write here instead of stdout.")
@click.pass_context
def compliance_report(ctx: click.Context, level: int, systems: tuple[str, ...], fmt: str, output: Path | None) -> None:
    """Per-control verdicts (pass / fail / not applicable / no evidence) with evidence,
    and a summary per CII system."""
    from compliance.report import render

    cfg = _cfg(ctx)
    _require_embedded(cfg)
    rep = build_compliance_report(cfg, level, systems)
    if fmt == "json":
        data: str | bytes = dumps([v.to_dict() for v in rep.verdicts]) + "\n"
    else:
        try:
            data = render(rep, fmt)
        except RuntimeError as e:  # PDF without weasyprint
            err.print(f"[red]{e}[/]")
            sys.exit(2)
    if output is not None:
        output.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
        err.print(f"wrote {output}")
    elif isinstance(data, bytes):
        sys.stdout.buffer.write(data)
    else:
        click.echo(data, nl=False)


@compliance.command("discover")
@click.option("--days", default=7.0, show_default=True, help="Look back this many days.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def compliance_discover(ctx: click.Context, days: float, as_json: bool) -> None:
    """Hosts not in the inventory, undeclared services, silent assets (from stored events)."""
    from compliance import discovery
    from compliance.inventory import Inventory

    cfg = _cfg(ctx)
    _require_embedded(cfg)
    inv = Inventory.open(cfg.data_dir)
    store = _open_store(cfg)
    try:
        out = {"unknown_hosts": discovery.as_rows(discovery.unknown_hosts(store, inv, days=days)),
               "undeclared_services": discovery.as_rows(discovery.undeclared_services(store, inv, days=days)),
               "silent_assets": discovery.as_rows(discovery.silent_assets(store, inv, days=days))}
    finally:
        store.close()
    if as_json:
        click.echo(dumps(out))
        return
    for name, rows in out.items():
        t = Table(title=f"{name.replace('_', ' ')}: {len(rows)}", title_justify="left")
        cols = list(rows[0]) if rows else ["-"]
        for c in cols:
            t.add_column(c, overflow="fold")
        for r in rows:
            t.add_row(*(_fmt_time(r[c]) if isinstance(r[c], datetime) else str(r[c] if r[c] is not None else "")
                        for c in cols))
        console.print(t)


def _load_command_modules() -> None:
    """Register the command groups in :mod:`taishi.commands` (one module per group)."""
    import importlib
    import pkgutil

    import taishi.commands as pkg

    for m in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        importlib.import_module(f"{pkg.__name__}.{m.name}")


_load_command_modules()

if __name__ == "__main__":  # pragma: no cover
    main()
