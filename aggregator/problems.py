"""Problems found in inputs: reported as `where: message`, never raised past a stage."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

log = logging.getLogger("aggregator")


class Severity(Enum):
    WARNING = "warning"  # recovered: the input is used
    ERROR = "error"  # the input is skipped
    # left out on purpose (a Hexo draft, `published: false`): not a problem, so it is
    # logged at debug level and counted by neither; --json still lists it
    NOTE = "note"


@dataclass(frozen=True)
class Problem:
    where: str  # "path:line" (path relative to its content dir) or a URL
    message: str
    severity: Severity

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class ProblemLog:
    """Collects problems of one run and logs each as it arrives."""

    items: list[Problem] = field(default_factory=list)
    echo: bool = True  # False: collect only (the caller replays them in its own order)

    def warn(self, where: str, message: str) -> None:
        self._add(Problem(where, message, Severity.WARNING))

    def error(self, where: str, message: str) -> None:
        self._add(Problem(where, message, Severity.ERROR))

    def note(self, where: str, message: str) -> None:
        self._add(Problem(where, message, Severity.NOTE))

    def replay(self, problems: list[Problem] | tuple[Problem, ...]) -> None:
        """Report again what an earlier run found in an input that has not changed."""
        for problem in problems:
            self._add(problem)

    def _add(self, problem: Problem) -> None:
        self.items.append(problem)
        if not self.echo:
            return
        level = _LEVELS[problem.severity]
        log.log(level, "%s", problem, extra={"problem": problem})

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.items if p.severity is Severity.ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.items if p.severity is Severity.WARNING]

    @property
    def notes(self) -> list[Problem]:
        return [p for p in self.items if p.severity is Severity.NOTE]


def beyond(found: Iterable[Problem], known: Iterable[Problem]) -> list[Problem]:
    """The problems of `found` that `known` does not hold, in their order. Counted: a
    problem `found` holds twice and `known` once is in the result once. (Two builds of
    one command read the same inputs: the second tells only what the first did not.)"""
    left = Counter(known)
    out = []
    for problem in found:
        if left[problem]:
            left[problem] -= 1
        else:
            out.append(problem)
    return out


_LEVELS = {Severity.WARNING: logging.WARNING, Severity.ERROR: logging.ERROR,
           Severity.NOTE: logging.DEBUG}


class ConfigError(Exception):
    """The configuration cannot be used at all (exit code 2)."""
