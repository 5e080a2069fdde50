"""Hexo's ways of writing a post: its tag plugins, its Markdown, excerpts and assets."""
