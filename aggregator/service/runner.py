"""`aggregator run`: lifecycle, signals and the single build thread.

Every trigger (start, file events, polls, SIGHUP) only *requests* a build; one worker
thread runs them one after another, folding requests that arrive meanwhile into the
next build, so builds never overlap and a burst costs at most one extra build.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from types import FrameType

from aggregator.advice import warn_defaults
from aggregator.config import Config
from aggregator.pipeline import Builder
from aggregator.problems import Problem, ProblemLog
from aggregator.publish.atomic import PublishError
from aggregator.service.http import HTTPService
from aggregator.service.lock import BuildLock
from aggregator.service.metrics import ServiceStats
from aggregator.service.notify import Notifier
from aggregator.service.scheduler import PollScheduler
from aggregator.service.watcher import ContentWatcher
from aggregator.service.websub import PingSender

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
        lock = BuildLock(config.state_path)
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
                 problems: Sequence[Problem] = ()) -> None:
        """`problems`: what loading `config` found (told already)."""
        self.config = config
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
            self._ping()

    def _ping(self) -> None:
        # A dead build thread means no more feeds: stop pinging and let systemd restart us.
        if self.notifier.watchdog_seconds and self.worker.alive:
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
        self.scheduler.schedule(new)
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
        self.scheduler.shutdown()
        if self.watcher is not None:
            self.watcher.stop()
        finished = self.worker.stop()
        self.pings.stop()
        if self.http is not None:
            self.http.stop()
        self.notifier.close()
        if not finished:
            log.error("the running build did not finish within %.0fs", STOP_TIMEOUT)
            return 1
        log.info("stopped")
        return self._exit


def run_service(config: Config, loader: Loader) -> int:
    return Service(config, loader).run()
