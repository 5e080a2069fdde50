"""aggregator: Hexo posts and upstream feeds in, sanitised Atom + RSS 2.0 per category out."""

__version__ = "0.1.0"
PROJECT_URL = "https://github.com/aggregator-project/aggregator"
