"""Command line: `aggregator build|check` (contract and exit codes in docs/cli.md).

Exit codes: 0 fine (warnings only); 1 some inputs skipped / problems listed;
2 unusable config or missing content dir, nothing written; 3 publishing failed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from aggregator import __version__
from aggregator.config import Config, load_config
from aggregator.problems import ConfigError, ProblemLog
from aggregator.publish.atomic import PublishError

if TYPE_CHECKING:
    from aggregator.pipeline import BuildReport

log = logging.getLogger("aggregator")

EXIT_OK, EXIT_SKIPPED, EXIT_CONFIG, EXIT_PUBLISH = 0, 1, 2, 3


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


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_ProblemFormatter("%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="aggregator", description=__doc__.splitlines()[0])
    top.add_argument("--version", action="version", version=f"aggregator {__version__}")
    top.add_argument("--log-level", default="info",
                     choices=["debug", "info", "warning", "error"])
    sub = top.add_subparsers(dest="command", required=True)
    for name, (text, _run, add_arguments) in COMMANDS.items():
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument("-c", "--config", type=Path, default=Path("config.yaml"),
                         help="config file (default: ./config.yaml)")
        if add_arguments is not None:
            add_arguments(cmd)
    return top


def _load(path: Path, problems: ProblemLog) -> Config | None:
    try:
        config = load_config(path, problems)
    except ConfigError as exc:
        log.error("%s", exc)
        return None
    missing = [d for d in config.content_dirs if not d.is_dir()]
    if missing:
        for folder in missing:
            log.error("%s: content dir does not exist", folder)
        return None
    return config


def cmd_build(config: Config, problems: ProblemLog, args: argparse.Namespace) -> int:
    return _build(config, problems)[0]


def _build(config: Config, problems: ProblemLog,
           echo_problems: bool = True) -> tuple[int, BuildReport | None]:
    from aggregator.pipeline import build
    from aggregator.service.lock import BuildLock

    try:
        with BuildLock(config.state_path):  # never at the same time as `aggregator run`
            report = build(config, workers=os.cpu_count() or 1, echo_problems=echo_problems)
    except OSError as exc:  # the lock file (the build itself raises PublishError)
        log.error("%s; nothing written", exc)
        return EXIT_PUBLISH, None
    except PublishError as exc:
        log.error("%s; the previous feeds are kept", exc)
        return EXIT_PUBLISH, None
    report.problems.items[:0] = problems.items
    if report.up_to_date:
        log.info("nothing changed since the last build (%d feeds, %d entries); checked in "
                 "%.2fs; %d warnings", report.feeds, report.entries, report.seconds,
                 len(report.problems.warnings))
        return (EXIT_SKIPPED if report.problems.errors else EXIT_OK), report
    log.info("published %d feeds from %d entries in %.2fs: %d written, %d unchanged, "
             "%d removed; posts: %d read, %d skipped; %d warnings",
             report.feeds, report.entries, report.seconds, len(report.written),
             report.unchanged, len(report.removed), report.posts_read, report.skipped,
             len(report.problems.warnings))
    return (EXIT_SKIPPED if report.problems.errors else EXIT_OK), report


def cmd_check(config: Config, problems: ProblemLog, args: argparse.Namespace) -> int:
    from aggregator.pipeline import BuildReport
    from aggregator.sources.read import read_posts
    from aggregator.state.store import StateStore

    report = BuildReport(problems=problems)
    # A throwaway state: check writes nothing, not even first-seen times.
    state = StateStore(Path(":memory:"))
    read_posts(config, state, report)
    failing = _check_sources(config, problems)
    log.info("checked %d posts: %d usable, %d skipped; %d sources failing; %d errors, "
             "%d warnings", report.posts_found, report.posts_read, report.skipped, failing,
             len(problems.errors), len(problems.warnings))
    return EXIT_SKIPPED if problems.items or failing else EXIT_OK


def _check_sources(config: Config, problems: ProblemLog) -> int:
    """Print each upstream source's state (read-only); report the failing ones as errors:
    `fetch.failing_after` errors in a row, or disabled (410 Gone). Returns how many."""
    import sqlite3

    if not config.upstream:
        return 0
    rows: dict[str, dict[str, object]] = {}
    if config.state_path.exists():
        try:
            db = sqlite3.connect(f"file:{config.state_path}?mode=ro", uri=True, timeout=5)
            try:
                db.row_factory = sqlite3.Row
                rows = {r["url"]: dict(r) for r in db.execute("SELECT * FROM upstream_source")}
            finally:
                db.close()
        except sqlite3.Error as exc:
            problems.warn(str(config.state_path), f"cannot read source state: {exc}")
    failing = 0
    for source in config.upstream:
        row = rows.get(source.url)
        if not source.enabled:
            log.info("source %s: disabled in the config", source.url)
            continue
        if row is None:
            log.info("source %s: never polled", source.url)
            continue
        errors = int(row.get("error_count") or 0)  # type: ignore[call-overload]
        line = (f"source {source.url}: last status {row.get('last_status') or '-'}, "
                f"{errors} errors in a row, last error: {row.get('last_error') or '-'}, "
                f"next poll {row.get('next_poll_at') or 'now'}")
        if row.get("moved_to"):
            line += f", moved to {row['moved_to']}"
        log.info("%s", line)
        if row.get("disabled"):
            failing += 1
            problems.error(source.url, f"disabled: {row['disabled']}")
        elif errors >= config.failing_after:
            failing += 1
            problems.error(source.url, f"failing: {errors} errors in a row; last: "
                                       f"{row.get('last_error')}")
    return failing


def cmd_opml(config: Config, problems: ProblemLog, args: argparse.Namespace) -> int:
    """Write every upstream source (inline and from OPML files) as OPML 2.0."""
    from aggregator.sources.upstream.opml import export_opml
    from aggregator.sources.upstream.posts import atomic_write

    data = export_opml(config.upstream, f"{config.site_title} subscriptions")
    if args.output is None or str(args.output) == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        try:
            atomic_write(args.output, data)
        except OSError as exc:
            log.error("%s: cannot write: %s", args.output, exc)
            return EXIT_PUBLISH
        log.info("wrote %d sources to %s", len(config.upstream), args.output)
    return EXIT_OK


def _opml_arguments(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("action", choices=["export"], help="export: write every source as OPML")
    cmd.add_argument("-o", "--output", type=Path, default=None,
                     help="output file (default: standard output)")


def cmd_run(config: Config, problems: ProblemLog, args: argparse.Namespace) -> int:
    from aggregator.service.runner import Service

    return Service(config, _load, quiet=args.debounce_ms / 1000,
                   max_delay=args.max_delay_ms / 1000).run()


def _run_arguments(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--debounce-ms", type=int, default=50,
                     help="quiet window after file events before a rebuild (default 50)")
    cmd.add_argument("--max-delay-ms", type=int, default=1000,
                     help="rebuild at least this often during a steady stream (default 1000)")


def cmd_fetch(config: Config, problems: ProblemLog, args: argparse.Namespace) -> int:
    """Poll due (or all) upstream sources, store what they gave, then publish like build."""
    from aggregator.pipeline import open_state_to_store
    from aggregator.sources.upstream.poll import PollReport, poll
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
             "%d new entries", polled.due, polled.seconds, polled.fetched,
             polled.not_modified, len(polled.failed), polled.new_entries)
    code, report = _build(config, problems)
    if report is not None and report.unknown_images and _probe_post_images(config, report):
        # now with the probed types; the same inputs, so the same problems, which the
        # first build printed already
        code, report = _build(config, ProblemLog(), echo_problems=False)
    if code == EXIT_PUBLISH:
        return code
    return EXIT_SKIPPED if polled.failed or code != EXIT_OK else EXIT_OK


def _probe_post_images(config: Config, report: BuildReport) -> int:
    """Probe the post images whose type the build could not tell (fetch may use the
    network, build may not); the number probed. Never fatal."""
    from aggregator.pipeline import open_state
    from aggregator.sources.upstream.probe import probe_urls
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
                     help="poll every enabled source, not only the due ones")


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup_logging(args.log_level)
    problems = ProblemLog()
    config = _load(args.config, problems)
    if config is None:
        return EXIT_CONFIG
    _text, run, _add_arguments = COMMANDS[args.command]
    return run(config, problems, args)


Command = Callable[[Config, ProblemLog, argparse.Namespace], int]
AddArguments = Callable[[argparse.ArgumentParser], None] | None
# name -> (help text, runner, extra arguments). Each command module adds its own line.
COMMANDS: dict[str, tuple[str, Command, AddArguments]] = {
    "build": ("publish every feed from the content dir and stored upstream entries; "
              "never uses the network", cmd_build, None),
    "check": ("validate the config, every post and the upstream sources' state; write "
              "nothing", cmd_check, None),
    "fetch": ("poll the due upstream sources (--all: every enabled one), store their "
              "entries, then publish like build", cmd_fetch, _fetch_arguments),
    "run": ("the service: first build, then watch the content dir, poll upstream, "
            "rebuild, optionally serve; 0 after SIGTERM", cmd_run, _run_arguments),
    "opml": ("opml export [-o FILE]: write every upstream source as OPML 2.0",
             cmd_opml, _opml_arguments),
}
