"""Upstream feeds: fetch (httpx), parse (feedparser / our JSON Feed), normalise, poll."""
