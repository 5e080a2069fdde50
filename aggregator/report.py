"""What one build did: counts, files, problems (the CLI and the service report it)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from aggregator.problems import ProblemLog


@dataclass
class BuildReport:
    posts_found: int = 0
    posts_read: int = 0
    entries: int = 0
    feeds: int = 0
    written: list[str] = field(default_factory=list)
    unchanged: int = 0
    removed: list[str] = field(default_factory=list)
    rendered: int = 0  # entries sanitised and serialised (the rest came from the cache)
    unknown_images: list[str] = field(default_factory=list)  # post images to probe
    seconds: float = 0.0
    up_to_date: bool = False  # inputs as the last complete build's: nothing was read or written
    patched: bool = False  # only the changed inputs were read (not every post)
    # an input failed in a way that need not be its own (an unexpected exception): the
    # next build does the work again rather than replay this one's problems
    retry: bool = False
    linkless: int | None = None  # entries published without a link (None: not counted)
    problems: ProblemLog = field(default_factory=ProblemLog)

    @property
    def skipped(self) -> int:
        return self.posts_found - self.posts_read

    @property
    def exit_code(self) -> int:
        return 1 if self.problems.errors else 0

    def followed_by(self, later: BuildReport) -> BuildReport:
        """One account of this build and `later`, a second build of the same command
        (`fetch` builds again after probing post images): the output and inputs as
        `later` left them, the files either wrote or removed (a file this build wrote
        is not `later`'s unchanged one), the renders and time of both."""
        again = set(later.written)
        first_only = [path for path in self.written if path not in again]
        gone = set(later.removed)
        return replace(
            later, written=[*first_only, *later.written],
            unchanged=max(0, later.unchanged - len(first_only)),
            removed=[*(path for path in self.removed if path not in gone), *later.removed],
            rendered=self.rendered + later.rendered, seconds=self.seconds + later.seconds,
            up_to_date=self.up_to_date and later.up_to_date)
