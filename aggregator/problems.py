"""Problems found in inputs: reported as `where: message`, never raised past a stage."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import Enum

log = logging.getLogger("aggregator")


class Severity(Enum):
    WARNING = "warning"  # recovered: the input is used
    ERROR = "error"  # the input is skipped


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

    def replay(self, problems: list[Problem] | tuple[Problem, ...]) -> None:
        """Report again what an earlier run found in an input that has not changed."""
        for problem in problems:
            self._add(problem)

    def _add(self, problem: Problem) -> None:
        self.items.append(problem)
        if not self.echo:
            return
        level = logging.WARNING if problem.severity is Severity.WARNING else logging.ERROR
        log.log(level, "%s", problem, extra={"problem": problem})

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.items if p.severity is Severity.ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.items if p.severity is Severity.WARNING]


class ConfigError(Exception):
    """The configuration cannot be used at all (exit code 2)."""
