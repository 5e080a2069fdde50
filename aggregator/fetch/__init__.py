"""Polling upstream sources: fetch and parse them (aggregator.sources.upstream), store
what they gave in the state (aggregator.state), write the posts `write_posts` asks for
and probe image types. A stage above both sources and state, as the build is."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aggregator.config import Config, UpstreamSource
    from aggregator.fetch.poll import PollReport


def poll_sources(config: Config, sources: Sequence[UpstreamSource]) -> PollReport:
    """Poll exactly these sources now and store the results (the service's seam;
    it decides when, and rebuilds afterwards). Problems are logged as `url: message`."""
    from aggregator.fetch.poll import PollReport, poll
    from aggregator.problems import ProblemLog
    from aggregator.state.open import open_state_to_store
    from aggregator.state.store import utc_now

    problems = ProblemLog()
    state = open_state_to_store(config, utc_now, problems, f"polling {len(sources)} sources")
    if state is None:  # reported; the build that follows publishes what is stored
        return PollReport(due=len(sources), failed=[s.url for s in sources],
                          outcomes={s.url: "failed" for s in sources})
    try:
        return poll(config, state, problems, utc_now, only=sources)
    finally:
        state.close()
