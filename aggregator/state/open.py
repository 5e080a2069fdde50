"""The state opened for a build or a poll: a build goes on with a temporary state when
the SQLite file cannot be opened; a poll, whose results would be lost, does not. A
PostgreSQL state that cannot be reached stops both (StateUnreachable): a temporary
state would publish feeds without every worker's entries."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from aggregator.config import Config
from aggregator.problems import ProblemLog
from aggregator.state.address import StateAddress
from aggregator.state.store import Clock, StateStore, StateUnusable


class StateUnreachable(Exception):
    """The PostgreSQL state cannot be reached or used (message: where and why)."""


def open_state(config: Config, clock: Clock, problems: ProblemLog) -> StateStore:
    """The state file, or an in-memory one if it cannot be opened (the build goes on).
    A read-only state is opened (what it stores is published); its `read_only` says
    why it cannot be written. With `state.url`, the PostgreSQL state or
    StateUnreachable."""
    if config.state_url is not None:
        from aggregator.state.postgres import PostgresError, PostgresStateStore

        try:
            return PostgresStateStore(config.state_url, clock, problems)
        except PostgresError as exc:
            raise StateUnreachable(f"{StateAddress.of(config)}: state database "
                                   f"unusable: {exc}") from exc
    try:
        return StateStore(config.state_path, clock, problems)
    except StateUnusable as exc:  # its stored entries are missing from this build
        problems.error(str(config.state_path), f"state unusable ({exc}); using a temporary "
                       "one: nothing stored in it is published and undated entries get "
                       "new dates")
    except (OSError, sqlite3.Error) as exc:  # busy: the next build has it again
        problems.warn(str(config.state_path), f"state unusable ({exc}); using a temporary "
                      "one, so undated entries may get new dates")
    return StateStore(Path(":memory:"), clock, problems)


def open_state_to_store(config: Config, clock: Clock, problems: ProblemLog,
                        what: str) -> StateStore | None:
    """The state, for a run that stores `what` (polled entries): None, with an error
    saying so and what to do, when the state cannot be written. Polling into a state
    that cannot keep the result would fetch everything again at every run."""
    try:
        state = open_state(config, clock, problems)
    except StateUnreachable as exc:
        problems.error(str(StateAddress.of(config)), f"{exc}: {what} not done")
        return None
    if state.read_only is None:
        return state
    problems.error(str(config.state_path), f"state file cannot be written "
                   f"({state.read_only}): {what} not done (nothing could be stored); what "
                   "is stored is published. Make the file and its folder writable for this "
                   "user (owner, mode, mount, free space) and run again")
    state.close()
    return None
