"""Sanitising: html.clean() for bodies, text helpers for titles and the like."""

# Bump on any change to what html.clean() outputs: cached renders keyed on it must be
# redone (fingerprints.render_fingerprint includes it, with nh3's and selectolax's
# versions). Kept here, not in html.py: the up-to-date check needs it, not nh3.
SANITIZER_VERSION = 4
