"""aggregator: Hexo posts and upstream feeds in, sanitised Atom/RSS feeds per category out.

Each command's --help lists its exit codes; docs/cli.md has the commands, the output of
--json and the exit codes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aggregator import __version__, progress
from aggregator.advice import config_label, warn_defaults
from aggregator.config import Config, UnknownKeys, load_config
from aggregator.problems import ConfigError, Problem, ProblemLog, beyond
from aggregator.publish.atomic import PublishError

if TYPE_CHECKING:
    from aggregator.fetch.poll import PollReport
    from aggregator.pipeline import BuildReport

log = logging.getLogger("aggregator")

EXIT_OK, EXIT_SKIPPED, EXIT_CONFIG, EXIT_PUBLISH = 0, 1, 2, 3
LEVELS = ["debug", "info", "warning", "error"]


class _ProblemFormatter(logging.Formatter):
    """`path:line: warning: message` for problems (gcc style, so editors jump to them),
    `level: message` for other warnings and errors, bare messages for info."""

    def format(self, record: logging.LogRecord) -> str:
        problem = getattr(record, "problem", None)
        if problem is not None:
            return f"{problem.where}: {problem.severity.value}: {problem.message}"
        message = super().format(record)
        return message if record.levelno <= logging.INFO else \
            f"{record.levelname.lower()}: {message}"


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """stderr, above any progress bar on screen."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if progress.write(self.format(record)):
                return
        except Exception:  # (as logging does: a message never stops the work)
            self.handleError(record)
            return
        super().emit(record)


def setup_logging(level: str, library_level: str = "warning") -> None:
    """Our loggers (`aggregator.*`) at `level`; everything else (markdown-it, httpcore,
    APScheduler, …) at `library_level`, so debug shows the program's own decisions."""
    handler = _Handler(sys.stderr)
    handler.setFormatter(_ProblemFormatter("%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, library_level.upper(), logging.WARNING))
    logging.getLogger("aggregator").setLevel(getattr(logging, level.upper(), logging.INFO))


# Each command's exit codes, shown in its --help (and in docs/cli.md).
EXIT_CODES = {
    "build": "0 published, warnings only; 1 published, some inputs skipped; 2 unusable "
             "config or missing content dir, nothing written; 3 publishing failed (I/O), "
             "previous feeds kept",
    "check": "0 clean; 1 problems listed or a source failing; 2 unusable config",
    "fetch": "0 all sources fine or not modified; 1 some source failed (its stored entries "
             "stay published) or inputs skipped; 2 unusable config; 3 publishing failed",
    "run": "0 after SIGTERM; 2 unusable config or missing content dir at start",
    "opml": "0 written; 2 unusable config; 3 cannot write",
}


def _common(defaults: bool) -> argparse.ArgumentParser:
    """-c, --log-level, --library-log-level and --quiet, accepted before and after the
    command: the top level holds the defaults, a command's copy only what was given."""
    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", type=Path, default=default(Path("config.yaml")),
                        help="config file (default: ./config.yaml)")
    common.add_argument("--log-level", choices=LEVELS, default=default("info"),
                        help="what the program says about its own work (default: info; "
                             "debug: its decisions)")
    common.add_argument("--library-log-level", choices=LEVELS, default=default("warning"),
                        help="the same for the libraries it uses (default: warning)")
    common.add_argument("-q", "--quiet", action="store_true", default=default(False),
                        help="no progress bars (they show only on a terminal anyway)")
    return common


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="aggregator", description=__doc__.split("\n\n")[0],
        epilog="Commands, --json output and exit codes: docs/cli.md. "
               "`aggregator COMMAND --help` for one command.",
        parents=[_common(True)])
    top.add_argument("--version", action="version", version=f"aggregator {__version__}")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (text, _run, add_arguments) in COMMANDS.items():
        cmd = sub.add_parser(name, help=text, description=text, parents=[_common(False)],
                             epilog=f"exit codes: {EXIT_CODES[name]}")
        if add_arguments is not None:
            add_arguments(cmd)
    return top


def _json_argument(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--json", action="store_true",
                     help="print one JSON object on stdout (schema: docs/cli.md)")


def _split_where(line: str) -> tuple[str, str]:
    """`path:12: message` or `path: message` → (where, message)."""
    match = re.match(r"(.+?:\d+): (.*)", line, re.DOTALL) or re.match(r"(.+?): (.*)", line,
                                                                        re.DOTALL)
    return (match.group(1), match.group(2)) if match else ("", line)


def _load(path: Path, problems: ProblemLog, content: bool = True) -> Config | None:
    """The config, or None after telling why not. `content`: its content dirs must
    exist (a fetch worker has none)."""
    try:
        config = load_config(path, problems)
    except UnknownKeys as exc:
        for where, message in exc.items:
            problems.error(where, message)
        return None
    except ConfigError as exc:
        for line in str(exc).splitlines():
            problems.error(*_split_where(line))
        return None
    if config.opml_files:  # its module (and lxml) imported only then
        from aggregator.sources.upstream.opml import with_opml_sources

        config = with_opml_sources(config, problems)
    missing = [d for d in config.content_dirs if not d.is_dir()] if content else []
    if missing:
        for folder in missing:
            problems.error(str(folder), f"content dir does not exist (content.dir in "
                                        f"{config_label(config)})")
        return None
    return config


def cmd_build(config: Config, problems: ProblemLog, args: argparse.Namespace) -> int:
    code, report = _build(config, problems)
    _summary(report, problems)
    if args.json:
        _print_json({"command": "build", "exit_code": code,
                     **(_build_json(report) if report is not None else {}),
                     **_problems_json(problems)})
    return code


def _build(config: Config, problems: ProblemLog, earlier: BuildReport | None = None,
           *, images: bool = False) -> tuple[int, BuildReport | None]:
    """Build under the build lock; the build's problems join `problems`, the command's
    own, which decide the exit code. `earlier`: this command's previous build (the same
    inputs): its problems were told already, so only what this build adds is told and
    counted. The first build also warns about silent defaults. `images`: the report
    lists the post images no probe told the type of yet."""
    from aggregator.pipeline import build
    from aggregator.service.lock import build_lock

    lock = build_lock(config)
    try:
        with lock:  # never at the same time as `aggregator run`
            report = build(config, workers=os.cpu_count() or 1,
                           echo_problems=earlier is None, unknown_images=images)
    except PublishError as exc:
        _take(problems, exc.found, earlier)
        problems.error(*_split_where(f"{exc}; the previous feeds are kept"))
        return EXIT_PUBLISH, None
    except OSError as exc:  # the lock file (the build itself raises PublishError)
        problems.error(str(exc.filename or lock.path),
                       f"{exc.strerror or exc} (the build lock: {lock.path}); nothing written")
        return EXIT_PUBLISH, None
    _take(problems, report.problems.items, earlier)
    if earlier is None:
        warn_defaults(config, report.linkless, problems)
    return (EXIT_SKIPPED if problems.errors else EXIT_OK), report


def _take(problems: ProblemLog, found: Sequence[Problem], earlier: BuildReport | None
          ) -> None:
    """Add a build's problems to the command's: the first build told them as it found
    them; a later one is quiet, and what it found beyond the first is told now."""
    if earlier is None:
        problems.items.extend(found)
    else:
        problems.replay(beyond(found, earlier.problems.items))


def _summary(report: BuildReport | None, problems: ProblemLog) -> None:
    """The line that ends a build or fetch: what was published, and the problems of
    the whole command (those the exit code and --json count)."""
    counts = f"{len(problems.errors)} errors, {len(problems.warnings)} warnings"
    if report is None:
        log.info("publishing failed; %s", counts)
    elif report.up_to_date:
        log.info("nothing changed since the last build (%d feeds, %d entries); checked in "
                 "%.2fs; %s", report.feeds, report.entries, report.seconds, counts)
    else:
        log.info("published %d feeds from %d entries in %.2fs: %d written, %d unchanged, "
                 "%d removed; posts: %d read, %d skipped; %s",
                 report.feeds, report.entries, report.seconds, len(report.written),
                 report.unchanged, len(report.removed), report.posts_read, report.skipped,
                 counts)


def cmd_check(config: Config, problems: ProblemLog, args: argparse.Namespace) -> int:
    from aggregator.pipeline import BuildReport
    from aggregator.sources.read import read_posts
    from aggregator.sources.walk import discover
    from aggregator.state.store import StateStore

    report = BuildReport(problems=problems)
    # A throwaway state: check writes nothing, not even first-seen times.
    state = StateStore(Path(":memory:"))
    posts = discover(config, problems)
    linkless = 0
    for read in read_posts(config, posts, [None] * len(posts), state.first_seen,
                           lambda read: read, every_post=posts):
        problems.replay(read.problems)
        if read.entry is not None:
            report.posts_read += 1
            linkless += not read.entry.link
    report.posts_found = len(posts)
    warn_defaults(config, linkless, problems)
    sources = _check_sources(config, problems)
    hubs = _check_pings(config, problems)
    fleet = _check_fleet(config, problems) if config.state_url is not None else None
    failing = sum(1 for s in sources if s["state"] in ("failing", "disabled"))
    log.info("checked %d posts: %d usable, %d skipped; %d sources failing; %d errors, "
             "%d warnings", report.posts_found, report.posts_read, report.skipped, failing,
             len(problems.errors), len(problems.warnings))
    code = EXIT_SKIPPED if problems.errors or problems.warnings or failing else EXIT_OK
    if args.json:
        _print_json({"command": "check", "exit_code": code,
                     "posts": _posts_json(report), "sources": sources,
                     "failing_sources": failing,
                     **({"websub": hubs} if config.websub_hubs else {}),
                     **({"fleet": fleet} if fleet is not None else {}),
                     **_problems_json(problems)})
    return code


def _check_fleet(config: Config, problems: ProblemLog) -> dict[str, Any] | None:
    """On a shared state: the fetch workers seen, the host leases and the queue (due,
    running, failing), as the database has them (read-only)."""
    import sqlite3

    from aggregator.state.address import StateAddress
    from aggregator.state.fleet import queue_view
    from aggregator.state.store import utc_now

    address = StateAddress.of(config)
    try:
        db = address.connect()
        try:
            view = queue_view(db, utc_now().isoformat(), config.failing_after)
        finally:
            db.close()
    except sqlite3.Error as exc:
        problems.warn(str(address), f"cannot read the fetch workers' queue: {exc}")
        return None
    log.info("queue: %d sources, %d due, %d being polled, %d failing; %d hosts leased",
             view.sources, view.due, view.running, view.failing, len(view.leases))
    for worker in view.workers:
        log.info("worker %s: last seen %.0fs ago; %d polled, %d fetched, %d failed; "
                 "%d hosts", worker["name"], worker["seen_seconds_ago"], worker["polled"],
                 worker["fetched"], worker["failed"], worker["hosts"])
    return {"sources": view.sources, "due": view.due, "running": view.running,
            "failing": view.failing, "workers": view.workers,
            "leases": [{"host": h, "owner": o, "seconds_left": round(s, 1)}
                       for h, o, s in view.leases]}


def _check_sources(config: Config, problems: ProblemLog) -> list[dict[str, Any]]:
    """Print each upstream source's state (read-only); report the failing ones as errors:
    `fetch.failing_after` errors in a row, or disabled (410 Gone). Returns each
    source's state (as --json prints it)."""
    import sqlite3

    if not config.upstream:
        return []
    from aggregator.state.address import StateAddress

    rows: dict[str, dict[str, Any]] = {}
    address = StateAddress.of(config)
    if address.shared or config.state_path.exists():
        columns = ("url", "etag", "last_modified", "last_status", "error_count",
                   "last_error", "last_polled_at", "next_poll_at", "disabled", "moved_to")
        try:
            db = address.connect(read_only=True)
            try:
                rows = {r[0]: dict(zip(columns, r, strict=True)) for r in db.execute(
                    f"SELECT {', '.join(columns)} FROM upstream_source")}  # noqa: S608
            finally:
                db.close()
        except sqlite3.Error as exc:
            problems.warn(str(address), f"cannot read source state: {exc}")
    out: list[dict[str, Any]] = []
    for source in config.upstream:
        row = rows.get(source.url)
        entry: dict[str, Any] = {"url": source.url, "state": "ok", "last_status": None,
                                 "errors_in_a_row": 0, "last_error": None,
                                 "next_poll": None, "moved_to": None}
        out.append(entry)
        if not source.enabled:
            entry["state"] = "disabled in config"
            log.info("source %s: disabled in the config", source.url)
            continue
        if row is None:
            entry["state"] = "never polled"
            log.info("source %s: never polled", source.url)
            continue
        errors = int(row.get("error_count") or 0)
        entry.update(last_status=row.get("last_status"), errors_in_a_row=errors,
                     last_error=row.get("last_error"), next_poll=row.get("next_poll_at"),
                     moved_to=row.get("moved_to"))
        line = (f"source {source.url}: last status {entry['last_status'] or '-'}, "
                f"{errors} errors in a row, last error: {entry['last_error'] or '-'}, "
                f"next poll {entry['next_poll'] or 'now'}")
        if entry["moved_to"]:
            line += f", moved to {entry['moved_to']}"
        log.info("%s", line)
        if row.get("disabled"):
            entry["state"] = "disabled"
            problems.error(source.url, f"disabled: {row['disabled']}")
        elif errors >= config.failing_after:
            entry["state"] = "failing"
            problems.error(source.url, f"failing: {errors} errors in a row; last: "
                                       f"{row.get('last_error')}")
    return out


def cmd_opml(config: Config, problems: ProblemLog, args: argparse.Namespace) -> int:
    """Write every upstream source (inline and from OPML files) as OPML 2.0."""
    from aggregator.nofollow import replace_path
    from aggregator.sources.upstream.opml import export_opml

    data = export_opml(config.upstream, f"{config.site_title} subscriptions")
    if args.output is None or str(args.output) == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        try:
            replace_path(args.output, data)
        except OSError as exc:
            log.error("%s: cannot write: %s", args.output, exc)
            return EXIT_PUBLISH
        log.info("wrote %d sources to %s", len(config.upstream), args.output)
    return EXIT_OK


def _opml_arguments(cmd: argparse.ArgumentParser) -> None:
    actions = cmd.add_subparsers(dest="action", required=True, metavar="ACTION")
    export = actions.add_parser(
        "export", parents=[_common(False)],
        help="write every upstream source (inline and from OPML files) as OPML 2.0",
        description="Write every upstream source (inline and from OPML files) as OPML 2.0.",
        epilog=f"exit codes: {EXIT_CODES['opml']}")
    export.add_argument("-o", "--output", type=Path, default=None,
                        help="output file (default: standard output)")


def cmd_run(config: Config, problems: ProblemLog, args: argparse.Namespace) -> int:
    from aggregator.service.runner import Service

    if args.role != "both" and config.state_url is None:
        problems.error(config_label(config), f"--role {args.role} needs a shared state: set "
                       "state.url to a PostgreSQL database (docs/scaling.md); the SQLite "
                       "file serves one machine, which runs both roles")
        return EXIT_CONFIG

    def loader(path: Path, found: ProblemLog) -> Config | None:
        return _load(path, found, content=args.role != "fetch")

    return Service(config, loader, quiet=args.debounce_ms / 1000,
                   max_delay=args.max_delay_ms / 1000, problems=problems.items,
                   role=args.role).run()


def _run_arguments(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--debounce-ms", type=int, default=50,
                     help="quiet window after file events before a rebuild (default 50)")
    cmd.add_argument("--max-delay-ms", type=int, default=1000,
                     help="rebuild at least this often during a steady stream (default 1000)")
    cmd.add_argument("--role", choices=("both", "fetch", "publish"), default="both",
                     help="on a PostgreSQL state (state.url): fetch polls due sources as one "
                          "of many workers; publish builds and publishes, one at a time "
                          "(others stand by); both (default) does each")


def cmd_fetch(config: Config, problems: ProblemLog, args: argparse.Namespace) -> int:
    """Poll due (or all) upstream sources, store what they gave, then publish like build."""
    from aggregator.fetch.poll import PollReport, poll
    from aggregator.state.open import open_state_to_store
    from aggregator.state.store import utc_now

    state = open_state_to_store(config, utc_now, problems, "polling")
    if state is None:
        polled = PollReport()
    else:
        try:
            polled = poll(config, state, problems, utc_now, everything=args.all)
        finally:
            state.close()
    log.info("polled %d sources in %.2fs: %d fetched, %d not modified, %d failed; "
             "%d new entries%s", polled.due, polled.seconds, polled.fetched,
             polled.not_modified, len(polled.failed), polled.new_entries, _waiting(polled))
    code, report = _build(config, problems, images=config.images_probe)
    if report is not None and report.unknown_images and _probe_post_images(config, report):
        # again with the probed types: the same inputs, so mostly the same problems
        first = report
        code, report = _build(config, problems, earlier=first)
        report = first.followed_by(report) if report is not None else None
    _summary(report, problems)
    pinged = _send_pings(config)
    if code == EXIT_OK and polled.failed:
        code = EXIT_SKIPPED
    if args.json:
        _print_json({"command": "fetch", "exit_code": code, "poll": _poll_json(polled),
                     "build": _build_json(report) if report is not None else None,
                     **({"websub": pinged} if pinged is not None else {}),
                     **_problems_json(problems)})
    return code


def _send_pings(config: Config) -> dict[str, Any] | None:
    """`fetch` sends every waiting WebSub ping once, after its builds; what failed
    stays waiting (for the next fetch or the service). None without hubs."""
    if not config.websub_hubs:
        return None
    from aggregator.fetch.websub import send_pings

    sent = send_pings(config, due_only=False)
    return {"sent": sent.sent, "failed": sent.failed, "errors": sent.errors}


def _check_pings(config: Config, problems: ProblemLog) -> list[dict[str, Any]]:
    """Each hub's waiting WebSub pings (read-only); a hub whose pings failed is a
    warning naming its last error."""
    import sqlite3

    from aggregator.state.address import StateAddress
    from aggregator.state.websub import PingQueue

    if not config.websub_hubs or (config.state_url is None
                                  and not config.state_path.exists()):
        return []
    try:
        hubs = {hub.hub: hub for hub in PingQueue(StateAddress.of(config)).pending()}
    except sqlite3.Error as exc:
        problems.warn(str(config.state_path), f"cannot read WebSub pings: {exc}")
        return []
    out = []
    for url in config.websub_hubs:
        hub = hubs.get(url)
        out.append({"hub": url, "waiting": hub.pending if hub else 0,
                    "failed": hub.failed if hub else 0,
                    "oldest": hub.oldest if hub else None,
                    "last_error": hub.last_error if hub else None})
        if hub is None:
            log.info("WebSub hub %s: no ping waiting", url)
        elif hub.failed:
            problems.warn(url, f"WebSub: {hub.pending} pings waiting since {hub.oldest}, "
                               f"{hub.failed} failed; last error: {hub.last_error}")
        else:
            log.info("WebSub hub %s: %d pings waiting since %s", url, hub.pending, hub.oldest)
    return out


def _waiting(polled: PollReport) -> str:
    """`; 3 sources wait after errors until …, 2 not due until …: --all polls them now`
    (nothing when every enabled source was polled)."""
    if not polled.waiting:
        return ""
    backoff = [when for _, when, errors in polled.waiting if errors]
    scheduled = [when for _, when, errors in polled.waiting if not errors]
    parts = []
    if backoff:
        parts.append(f"{len(backoff)} sources wait after errors (the first until "
                     f"{min(backoff).isoformat()})" if len(backoff) > 1 else
                     f"1 source waits after errors until {backoff[0].isoformat()}")
    if scheduled:
        parts.append(f"{len(scheduled)} not due until {min(scheduled).isoformat()}")
    return f"; {', '.join(parts)}: `aggregator fetch --all` polls them now"


def _probe_post_images(config: Config, report: BuildReport) -> int:
    """Probe the post images whose type the build could not tell (fetch may use the
    network, build may not); the number probed. Never fatal."""
    from aggregator.fetch.probe import probe_urls
    from aggregator.state.open import open_state
    from aggregator.state.store import utc_now

    state = open_state(config, utc_now, ProblemLog(echo=False))
    if state.read_only is not None:  # fetch said so already
        state.close()
        return 0
    try:
        return probe_urls(config, state, report.unknown_images, utc_now())
    except Exception as exc:  # probing is an extra
        log.warning("image probing of posts stopped: %s", exc)
        return 0
    finally:
        state.close()


def _fetch_arguments(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--all", action="store_true",
                     help="poll every enabled source, not only the due ones (also those "
                          "waiting after errors)")
    _json_argument(cmd)


# --json: one object on stdout; the schema is in docs/cli.md.

def _print_json(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def _problem_json(problem: Problem) -> dict[str, Any]:
    """`path:12` → path and line; a URL (`https://host:8080`) has no line."""
    path, line = problem.where, None
    head, sep, tail = path.rpartition(":")
    if sep and tail.isdigit() and "://" not in path:
        path, line = head, int(tail)
    return {"path": path, "line": line, "severity": problem.severity.value,
            "message": problem.message}


def _problems_json(problems: ProblemLog) -> dict[str, Any]:
    return {"errors": len(problems.errors), "warnings": len(problems.warnings),
            "notes": len(problems.notes),
            "problems": [_problem_json(p) for p in problems.items]}


def _posts_json(report: BuildReport) -> dict[str, int]:
    return {"found": report.posts_found, "read": report.posts_read,
            "skipped": report.skipped}


def _build_json(report: BuildReport) -> dict[str, Any]:
    return {"up_to_date": report.up_to_date, "seconds": round(report.seconds, 3),
            "feeds": report.feeds, "entries": report.entries,
            "written": len(report.written), "unchanged": report.unchanged,
            "removed": len(report.removed), "rendered": report.rendered,
            "posts": _posts_json(report), "entries_without_link": report.linkless}


def _poll_json(polled: PollReport) -> dict[str, Any]:
    return {"due": polled.due, "fetched": polled.fetched,
            "not_modified": polled.not_modified, "failed": polled.failed,
            "new_entries": polled.new_entries, "seconds": round(polled.seconds, 3),
            "waiting": [{"url": url, "next_poll": when.isoformat(), "errors_in_a_row": errors}
                        for url, when, errors in polled.waiting]}


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup_logging(args.log_level, args.library_log_level)
    # (not in the service: its builds and polls run on threads of their own)
    progress.show(sys.stderr.isatty() and not args.quiet and args.command != "run")
    problems = ProblemLog()
    config = _load(args.config, problems,
                   content=not (args.command == "run" and args.role == "fetch"))
    if config is None:
        if getattr(args, "json", False):
            _print_json({"command": args.command, "exit_code": EXIT_CONFIG,
                         **_problems_json(problems)})
        return EXIT_CONFIG
    _text, run, _add_arguments = COMMANDS[args.command]
    return run(config, problems, args)


Command = Callable[[Config, ProblemLog, argparse.Namespace], int]
AddArguments = Callable[[argparse.ArgumentParser], None] | None
# name -> (help text, runner, extra arguments). Each command module adds its own line.
COMMANDS: dict[str, tuple[str, Command, AddArguments]] = {
    "build": ("publish every feed from the content dir and stored upstream entries; "
              "never uses the network", cmd_build, _json_argument),
    "check": ("validate the config, every post and the upstream sources' state; write "
              "nothing", cmd_check, _json_argument),
    "fetch": ("poll the due upstream sources (--all: every enabled one), store their "
              "entries, then publish like build", cmd_fetch, _fetch_arguments),
    "run": ("the service: first build, then watch the content dir, poll upstream, "
            "rebuild, optionally serve", cmd_run, _run_arguments),
    "opml": ("opml export [-o FILE]: write every upstream source as OPML 2.0",
             cmd_opml, _opml_arguments),
}
