"""The state file opened for a build or a poll: a build goes on with a temporary state
when the file cannot be opened; a poll, whose results would be lost, does not."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from aggregator.config import Config
from aggregator.problems import ProblemLog
from aggregator.state.store import Clock, StateStore, StateUnusable


def open_state(config: Config, clock: Clock, problems: ProblemLog) -> StateStore:
    """The state file, or an in-memory one if it cannot be opened (the build goes on).
    A read-only state is opened (what it stores is published); its `read_only` says
    why it cannot be written."""
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
    state = open_state(config, clock, problems)
    if state.read_only is None:
        return state
    problems.error(str(config.state_path), f"state file cannot be written "
                   f"({state.read_only}): {what} not done (nothing could be stored); what "
                   "is stored is published. Make the file and its folder writable for this "
                   "user (owner, mode, mount, free space) and run again")
    state.close()
    return None
