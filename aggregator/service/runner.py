"""`aggregator run`: lifecycle, signals and the single build thread.

Every trigger (start, file events, polls, SIGHUP) only *requests* a build; one worker
thread runs them one after another, folding requests that arrive meanwhile into the
next build, so builds never overlap and a burst costs at most one extra build.

On a shared (PostgreSQL) state the service has roles (docs/scaling.md): `fetch` polls
as one of many fetch workers (no builds); `publish` builds when the workers' stored
entries wake it, one publisher at a time (a standby waits for the lock); `both`, the
default, is one of each in one process.
"""

from __future__ import annotations

import logging
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from aggregator.advice import warn_defaults
from aggregator.config import Config
from aggregator.pipeline import Builder
from aggregator.problems import Problem, ProblemLog
from aggregator.publish.atomic import PublishError
from aggregator.service.http import HTTPService
from aggregator.service.lock import AdvisoryLock, build_lock
from aggregator.service.metrics import ServiceStats
from aggregator.service.notify import Notifier
from aggregator.service.scheduler import PollScheduler
from aggregator.service.watcher import ContentWatcher
from aggregator.service.websub import PingSender

if TYPE_CHECKING:
    from aggregator.fetch.poll import PollReport
    from aggregator.fetch.worker import FetchWorker
    from aggregator.service.listener import EntryListener

log = logging.getLogger(__name__)

Loader = Callable[[Path, ProblemLog], Config | None]
STOP_TIMEOUT = 60.0  # below systemd's default TimeoutStopSec (90 s)
FULL_WALK_EVERY = 600.0  # seconds between full walks of the content dirs


class BuildWorker:
    """One thread, one build at a time; pending requests are merged."""

    def __init__(self, config: Callable[[], Config], stats: ServiceStats,
                 notifier: Notifier,
                 loaded: Callable[[Config], Sequence[Problem]] = lambda config: (),
                 wrote: Callable[[], None] = lambda: None) -> None:
        self._config = config
        self._wrote = wrote  # called after a build that wrote files (WebSub pings)
        self._loaded = loaded  # the problems loading a config found (told then)
        self.stats = stats
        self.notifier = notifier
        self._cv = threading.Condition()
        self._reasons: list[str] = []
        self._changed: set[str] | None = set()  # paths changed since the last build
        # One build session for the service's life: cache open, every post's last read
        # in memory, only changed files looked at.
        self.session = Builder(persistent=True)
        self._last_full_walk = 0.0
        self._stopping = threading.Event()
        self.builds = 0
        self.first_done = threading.Event()
        self._advised: Config | None = None  # the config whose silent defaults were told
        self._thread = threading.Thread(target=self._loop, name="build", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def started(self) -> bool:
        return self._thread.ident is not None

    def request(self, reason: str, changed: Collection[str] | None = ()) -> None:
        """Ask for a build. `changed`: the content files that changed (empty: none, e.g.
        an upstream poll; None: unknown, walk the content dirs)."""
        with self._cv:
            self._reasons.append(reason)
            if changed is None or self._changed is None:
                self._changed = None
            else:
                self._changed |= set(changed)
            self._cv.notify()

    def stop(self, timeout: float = STOP_TIMEOUT) -> bool:
        """Let the running build publish, drop pending ones; True if the thread ended."""
        self._stopping.set()
        with self._cv:
            self._cv.notify()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._reasons and not self._stopping.is_set():
                    self._cv.wait()
                if self._stopping.is_set():
                    return
                reasons, self._reasons = self._reasons, []
                changed, self._changed = self._changed, set()
            self._build(reasons, changed)

    def _build(self, reasons: list[str], changed: set[str] | None = None) -> None:
        config = self._config()
        if time.monotonic() - self._last_full_walk > FULL_WALK_EVERY:
            changed = None  # a safety net for file events the kernel dropped
        if changed is None:
            self._last_full_walk = time.monotonic()
        why = reasons[0] if len(reasons) == 1 else f"{reasons[0]} +{len(reasons) - 1} more"
        lock = build_lock(config)
        started = time.perf_counter()
        try:
            if not lock.acquire(cancel=self._stopping):
                return  # stopping while a shell build held the lock
        except OSError as exc:
            log.error("%s: cannot take the build lock: %s", lock.path, exc)
            self.stats.record_build(False, time.perf_counter() - started)
            self.first_done.set()
            return
        self.builds += 1
        number = self.builds
        try:
            self.notifier.status(f"build #{number} ({why})")
            # workers=1: forking a process that runs threads (watcher, HTTP) can deadlock
            report = self.session.build(config, changed=changed, workers=1)
        except PublishError as exc:
            log.error("build #%d failed: %s; the previous feeds are kept", number, exc)
            self.stats.record_build(False, time.perf_counter() - started)
            self.notifier.status(f"build #{number} failed: {exc}")
        except Exception:  # the service outlives a bug in one build
            log.exception("build #%d crashed; the previous feeds are kept", number)
            self.stats.record_build(False, time.perf_counter() - started)
            self.notifier.status(f"build #{number} crashed")
        else:
            if config is not self._advised:  # once per config load: at start, on reload
                self._advised = config
                # the first build of a config counts what loading it found
                report.problems.items[:0] = self._loaded(config)
                warn_defaults(config, report.linkless, report.problems)
            self.stats.record_build(True, report.seconds, report.entries, report.feeds)
            log.info("build #%d (%s) published %d feeds from %d entries in %.2fs: "
                     "%d written, %d unchanged, %d removed; %d errors, %d warnings",
                     number, why, report.feeds, report.entries, report.seconds,
                     len(report.written), report.unchanged, len(report.removed),
                     len(report.problems.errors), len(report.problems.warnings))
            self.notifier.status(f"build #{number}: {report.entries} entries, "
                                 f"{report.feeds} feeds, {report.seconds:.2f}s")
            if report.written:
                self._wrote()
        finally:
            lock.release()
            self.first_done.set()


class Service:
    def __init__(self, config: Config, loader: Loader, *, quiet: float = 0.05,
                 max_delay: float = 1.0, notifier: Notifier | None = None,
                 problems: Sequence[Problem] = (), role: str = "both") -> None:
        """`problems`: what loading `config` found (told already). `role`: fetch,
        publish or both (fetch and publish need a shared state)."""
        self.config = config
        self.role = role
        self.shared = config.state_url is not None
        self.fetcher: FetchWorker | None = None
        self.listener: EntryListener | None = None
        self.publisher: AdvisoryLock | None = None
        # a config and its load's problems, replaced together on reload
        self._load: tuple[Config, tuple[Problem, ...]] = (config, tuple(problems))
        self.loader = loader
        self.quiet, self.max_delay = quiet, max_delay
        self.notifier = notifier or Notifier()
        self.stats = ServiceStats()
        self.pings = PingSender(lambda: self.config, self.stats)
        self.worker = BuildWorker(lambda: self.config, self.stats, self.notifier,
                                  self._load_problems, self.pings.wake)
        self.scheduler = PollScheduler(lambda: self.config, self.stats, self.worker.request)
        self.watcher: ContentWatcher | None = None
        self.http: HTTPService | None = None
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._wake = threading.Event()
        self._exit = 0  # 1 when the server cannot listen after the first build

    def _load_problems(self, config: Config) -> tuple[Problem, ...]:
        loaded, problems = self._load
        return problems if loaded is config else ()

    # signal handlers run in the main thread between bytecodes: only set flags here.
    def _on_term(self, signum: int, frame: FrameType | None) -> None:
        self._stop.set()
        self._wake.set()

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self._reload.set()
        self._wake.set()

    def run(self) -> int:
        if logging.getLogger().level > logging.DEBUG:
            # "Scheduler started", "Job executed": noise at info level.
            logging.getLogger("apscheduler").setLevel(logging.WARNING)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        signal.signal(signal.SIGHUP, self._on_hup)
        if self.shared and self.role in ("fetch", "both"):
            self._start_fetcher()
        if self.role == "fetch":
            return self._run_fetch_only()
        if self.shared and not self._become_publisher():
            return self._shutdown()
        # Bind before the first build: a busy port is exit 1 at once, and systemd restarts
        # the unit with its backoff (exit 2 stays "unusable config").
        try:
            self.http = self._bind_http(self.config)
        except OSError as exc:
            log.error("%s; exiting", self._serve_error(self.config, exc))
            self.notifier.close()
            return 1
        self.notifier.status("first build")
        # Watch before the first build so nothing changed meanwhile is missed.
        self._start_watcher()
        self.pings.start()
        self.worker.start()
        self.worker.request("start")
        while not self.worker.first_done.wait(0.1):
            if self._stop.is_set():
                break
            self._ping()
        failed = None if self._stop.is_set() else self._start_http()
        if failed is not None:
            log.error("%s; exiting", self._serve_error(self.config, failed))
            self._stop.set()
            self._exit = 1
        if not self._stop.is_set():
            if self.shared:
                self._start_listener()
            else:
                self.scheduler.start()
            health = self.stats.health()
            state = "published" if health["ok"] else "FAILED (previous feeds kept)"
            log.info("first build %s; service ready, watching %s", state,
                     ", ".join(map(str, self.config.content_dirs)))
            self.notifier.ready(f"first build {state}; watching for changes")
        self._main_loop()
        return self._shutdown()

    def _main_loop(self) -> None:
        interval = self.notifier.watchdog_seconds or 5.0
        while not self._stop.is_set():
            self._wake.wait(interval)
            self._wake.clear()
            if self._reload.is_set() and not self._stop.is_set():
                self._reload.clear()
                self.reload()
            if self.publisher is not None and not self.publisher.held():
                # Its connection dropped, and the lock with it: another publisher may
                # have it now. Exit 1; systemd restarts us as a standby or publisher.
                log.error("lost the publisher lock (%s); exiting", self.publisher.path)
                self._exit = 1
                self._stop.set()
            self._ping()

    # roles on a shared state
    def _start_fetcher(self) -> None:
        from aggregator.fetch.worker import FetchWorker

        self.fetcher = FetchWorker(lambda: self.config, self._stop, self._record_polls)
        self.fetcher.start()
        log.info("fetch worker %s started", self.fetcher.name)

    def _record_polls(self, report: PollReport) -> None:
        for url, outcome in report.outcomes.items():
            self.stats.record_poll(url, outcome, "poll failed" if outcome == "failed" else "")

    def _run_fetch_only(self) -> int:
        self.stats.builds_here = False
        try:
            self.http = self._bind_http(self.config)  # /metrics and /healthz
        except OSError as exc:
            log.error("%s; exiting", self._serve_error(self.config, exc))
            self._stop.set()
            self.notifier.close()
            return 1
        if self._start_http() is not None:
            self.http = None
        self.notifier.ready("fetch worker: polling due sources")
        self._main_loop()
        return self._shutdown()

    def _become_publisher(self) -> bool:
        """Take the publisher lock, waiting as a standby while another holds it; False
        when stopped first or the database cannot be reached."""
        from aggregator.service.lock import publisher_lock

        self.publisher = publisher_lock(self.config)
        self.notifier.ready("standby: waiting for the publisher lock")
        try:
            taken = self.publisher.acquire(
                cancel=self._stop, waiting="another publisher holds {}; standing by")
        except OSError as exc:
            log.error("cannot take the publisher lock: %s", exc)
            self._exit = 1
            self.publisher = None
            return False
        if not taken:
            self.publisher = None
            return False
        log.info("publishing (holding %s)", self.publisher.path)
        self._publish_sources()
        return True

    def _publish_sources(self) -> None:
        from aggregator.state.address import StateAddress
        from aggregator.state.fleet import publish_sources

        try:
            db = StateAddress.of(self.config).connect()
            try:
                count = publish_sources(db, self.config)
            finally:
                db.close()
        except sqlite3.Error as exc:
            log.error("cannot write the sources to the state database: %s", exc)
            return
        log.info("%d upstream sources written to the state database for the fetch "
                 "workers", count)

    def _start_listener(self) -> None:
        from aggregator.service.listener import EntryListener

        assert self.config.state_url is not None
        self.listener = EntryListener(self.config.state_url, self._on_entries, self._stop)
        self.listener.start()

    def _on_entries(self, reason: str) -> None:
        """Workers stored entries: the posts `write_posts` sources ask for are written
        here (the publisher has the content dir), then a build."""
        sources = [s for s in self.config.upstream if s.enabled and s.write_posts]
        if sources:
            from aggregator.fetch.poll import write_posts_of
            from aggregator.state.open import StateUnreachable, open_state
            from aggregator.state.store import utc_now

            try:
                state = open_state(self.config, utc_now, ProblemLog())
            except StateUnreachable as exc:
                log.error("%s", exc)
            else:
                try:
                    write_posts_of(self.config, state, sources, ProblemLog(), utc_now)
                finally:
                    state.close()
        self.worker.request(reason)

    def _ping(self) -> None:
        # A dead build thread means no more feeds: stop pinging and let systemd restart us.
        working = self.fetcher.alive if self.role == "fetch" and self.fetcher is not None \
            else self.worker.alive
        if self.notifier.watchdog_seconds and working:
            self.notifier.watchdog()

    def _start_watcher(self) -> None:
        self.watcher = ContentWatcher(self.config.content_dirs, self._on_files,
                                      self.quiet, self.max_delay)
        self.watcher.start()

    def _on_files(self, count: int) -> None:
        self.stats.file_events.inc(count)
        changed = self.watcher.take_changes() if self.watcher is not None else None
        self.worker.request(f"{count} file event{'s' if count != 1 else ''}", changed)

    def _bind_http(self, config: Config) -> HTTPService | None:
        """A server bound to the config's `serve:` address (not yet serving), or None
        when serving is off; OSError when the address cannot be bound."""
        if config.serve_host is None or config.serve_port is None:
            return None
        return HTTPService(config.serve_host, config.serve_port,
                           lambda: self.config.output_dir, self.stats)

    @staticmethod
    def _serve_error(config: Config, exc: OSError) -> str:
        return (f"cannot serve on {config.serve_host}:{config.serve_port}: "
                f"{exc.strerror or exc}")

    def _start_http(self) -> OSError | None:
        """Serve on the bound socket; the OSError if it cannot listen (then no server)."""
        if self.http is None:
            return None
        try:
            self.http.start()
        except OSError as exc:
            self.http.stop()
            self.http = None
            return exc
        return None

    def _reload_http(self, old: Config) -> str | None:
        """Move the server to the new `serve:` address; on failure keep the old listener
        and return what went wrong."""
        new = self.config
        if (new.serve_host, new.serve_port) == (old.serve_host, old.serve_port):
            return None
        try:
            fresh = self._bind_http(new)
        except OSError as exc:
            if self.http is None or new.serve_port != old.serve_port:
                return self._serve_error(new, exc)
            # The same port on another host (127.0.0.1 -> 0.0.0.0) collides with our
            # own listener: free it, and take it back if the new address still fails.
            self.http.stop()
            self.http = None
            try:
                fresh = self._bind_http(new)
            except OSError as again:
                try:
                    self.http = self._bind_http(old)
                except OSError:
                    self.http = None
                self._start_http()
                return self._serve_error(new, again)
        if self.http is not None:
            self.http.stop()
        self.http = fresh
        failed = self._start_http()
        return None if failed is None else self._serve_error(new, failed)

    def reload(self) -> None:
        """SIGHUP: re-read the config; keep the old one if the new one is unusable."""
        self.notifier.reloading()
        path = self.config.path
        log.info("SIGHUP: reloading %s", path)
        found = ProblemLog()
        new = self.loader(path, found)
        if new is None:
            log.error("%s: config reload failed; keeping the previous config", path)
            self.notifier.ready("config reload failed; previous config kept")
            return
        self._load = (new, tuple(found.items))
        old, self.config = self.config, new
        if new.content_dirs != old.content_dirs:
            if self.watcher is not None:
                self.watcher.stop()
            self._start_watcher()
        serve_error = self._reload_http(old)
        if self.shared:
            if self.publisher is not None:
                self._publish_sources()
        else:
            self.scheduler.schedule(new)
        if self.role != "fetch":
            self.worker.request("config reloaded")
        if serve_error is None:
            log.info("%s: config reloaded", path)
            self.notifier.ready("config reloaded")
            return
        where = "http://{}:{}/".format(*self.http.address) if self.http else "nowhere"
        log.error("%s: config reloaded, but %s; still serving on %s", path, serve_error,
                  where)
        self.notifier.ready(f"config reloaded; {serve_error}; still serving on {where}")

    def _shutdown(self) -> int:
        log.info("stopping: finishing the current build")
        self.notifier.stopping()
        self._stop.set()
        self.scheduler.shutdown()
        if self.watcher is not None:
            self.watcher.stop()
        finished = self.worker.stop() if self.worker.started else True
        if self.fetcher is not None:  # its poll stores what it has, then ends
            finished = self.fetcher.join(STOP_TIMEOUT) and finished
        if self.listener is not None:
            self.listener.join(2.0)
        if self.publisher is not None:
            self.publisher.release()
        self.pings.stop()
        if self.http is not None:
            self.http.stop()
        self.notifier.close()
        if not finished:
            log.error("the running build did not finish within %.0fs", STOP_TIMEOUT)
            return 1
        log.info("stopped")
        return self._exit


def run_service(config: Config, loader: Loader, role: str = "both") -> int:
    return Service(config, loader, role=role).run()
