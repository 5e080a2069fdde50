"""Upstream feeds: fetch (httpcore, our pool), parse (lxml / feedparser / our JSON Feed),
normalise. Polling them into the state is aggregator.fetch."""
