"""Every problem of a command, once, in its text and in its --json, with counts that
agree with its exit code: `fetch` (the poll, both builds around the image probes, the
warnings about defaults), `build` and `check`; the command runs as a user runs it (a
process of its own) against sources served on 127.0.0.1."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import write_post
from pytest_httpserver import HTTPServer
from upstream_support import published, rss

# `where: severity: message`, as the CLI prints a problem on stderr
PROBLEM = re.compile(r"^(.+?): (warning|error): (.*)$", re.MULTILINE)
SUMMARY = re.compile(r"(\d+) errors, (\d+) warnings")


def _cli(config: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    """The command in a process of its own: exit code, its --json object, its stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "aggregator", *args, "--json", "-q", "-c", str(config)],
        capture_output=True, text=True, timeout=120, cwd=config.parent, check=False)
    assert done.stdout.count("\n") == 1, (done.stdout, done.stderr)
    return done.returncode, json.loads(done.stdout), done.stderr


def _shown(err: str) -> Counter[str]:
    return Counter(m.group(0) for m in PROBLEM.finditer(err))


def _listed(data: dict[str, Any]) -> Counter[str]:
    """The --json problems as stderr shows them (notes are shown at debug level only)."""
    def line(p: dict[str, Any]) -> str:
        where = p["path"] if p["line"] is None else f"{p['path']}:{p['line']}"
        return f"{where}: {p['severity']}: {p['message']}"
    return Counter(line(p) for p in data["problems"] if p["severity"] != "note")


def _assert_agree(code: int, data: dict[str, Any], err: str) -> None:
    """One account of the command: the exit code, the --json counts and list, the
    problems on stderr and the closing summary line all say the same."""
    assert data["exit_code"] == code
    assert _listed(data) == _shown(err), err
    severities = Counter(p["severity"] for p in data["problems"])
    assert (data["errors"], data["warnings"], data["notes"]) == (
        severities["error"], severities["warning"], severities["note"])
    summary = SUMMARY.findall(err)
    assert summary and summary[-1] == (str(data["errors"]), str(data["warnings"])), err


def _site(tmp_path: Path, httpserver: HTTPServer, sources: list[dict[str, Any]],
          **sections: Any) -> Path:
    """Posts with a problem of each kind, one whose image only a probe can type (so
    `fetch` builds twice), and a config leaving site.url and site.post_url unset."""
    httpserver.expect_request("/api/logo").respond_with_data(b"p" * 42,
                                                             content_type="image/png")
    posts = tmp_path / "posts"
    write_post(posts, "logo.md", f"title: Logo\ncategories: [A]\ndate: not a date\n"
                                 f"headimg: {httpserver.url_for('/api/logo')}")
    write_post(posts, "fine.md", "title: Fine\ncategories: [A]\ndate: 2026-01-02 10:00:00")
    (posts / "empty.md").write_bytes(b"")
    data: dict[str, Any] = {
        "content": {"dir": "posts"}, "output": {"dir": "feeds", "max_items": 0},
        "images": {"probe": True}, "state": {"path": "state/s.sqlite"},
        "fetch": {"allow_private_addresses": True, "timeout_seconds": 2,
                  "deadline_seconds": 5},
        "upstream": sources, **sections}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return config


def _sources(httpserver: HTTPServer) -> list[dict[str, Any]]:
    httpserver.expect_request("/bad.xml").respond_with_data("down", status=500)
    httpserver.expect_request("/repeats.xml").respond_with_data(
        rss([("r1", "Once"), ("r1", "Again")]), content_type="application/rss+xml")
    return [{"url": httpserver.url_for("/bad.xml"), "category": "X", "every": "1h"},
            {"url": httpserver.url_for("/repeats.xml"), "category": "Y", "every": "1h"}]


def test_fetch_json_and_text_report_the_poll_both_builds_and_the_defaults(
        tmp_path: Path, httpserver: HTTPServer) -> None:
    config = _site(tmp_path, httpserver, _sources(httpserver))
    code, data, err = _cli(config, "fetch", "--all")
    assert code == 1
    _assert_agree(code, data, err)
    assert max(_shown(err).values()) == 1, err  # both builds found these: told once
    listed = [(p["path"].rsplit("/", 1)[-1], p["severity"], p["message"])
              for p in data["problems"]]
    for path, severity, message in [
            ("bad.xml", "error", "500"), ("repeats.xml", "warning", "repeat the id"),
            ("empty.md", "error", "empty post"), ("logo.md", "warning", "undated"),
            ("config.yaml", "warning", "site.url is not set"),
            ("config.yaml", "warning", "no link: set site.post_url")]:
        assert [p for p in listed if p[:2] == (path, severity) and message in p[2]], \
            (path, message, listed)
    # the second build ran: the probed type is published
    assert any(r.path == "/api/logo" for r, _ in httpserver.log)
    # its counts are the command's: into an empty output dir, every file was written
    files = [p for p in (tmp_path / "feeds").rglob("*") if p.is_file()]
    assert (data["build"]["written"], data["build"]["unchanged"]) == (len(files), 0)
    assert f": {len(files)} written, 0 unchanged," in err
    logo = [e for e in published(tmp_path).entries if e.title == "Logo"]
    assert [e.get("enclosures", [{}])[0].get("type") for e in logo] == ["image/png"]


@pytest.mark.parametrize("command", [["build"], ["check"], ["fetch", "--all"]])
def test_every_command_reports_one_account_of_its_problems(
        tmp_path: Path, httpserver: HTTPServer, command: list[str]) -> None:
    config = _site(tmp_path, httpserver, _sources(httpserver))
    for _ in range(2):  # first, then with the state and the build cache of the first
        code, data, err = _cli(config, *command)
        assert code == 1
        _assert_agree(code, data, err)


def test_fetch_fails_on_an_error_found_before_the_second_build(
        tmp_path: Path, httpserver: HTTPServer) -> None:
    """A config error that is not fatal (an OPML file that cannot be read: its
    sources are skipped) fails the command however many builds follow."""
    httpserver.expect_request("/ok.xml").respond_with_data(
        rss([("k1", "Kept")]), content_type="application/rss+xml")
    config = _site(tmp_path, httpserver, [
        {"url": httpserver.url_for("/ok.xml"), "category": "X"},
        {"opml": "missing.opml"}])
    (tmp_path / "posts" / "empty.md").unlink()
    code, data, err = _cli(config, "fetch", "--all")
    assert any(r.path == "/api/logo" for r, _ in httpserver.log)  # two builds
    assert code == 1
    _assert_agree(code, data, err)
    assert [Path(p["path"]).name for p in data["problems"] if p["severity"] == "error"] \
        == ["missing.opml"]


@pytest.mark.parametrize("command", [["build"], ["fetch", "--all"]])
def test_a_publish_failure_is_an_error_in_the_json_too(
        tmp_path: Path, httpserver: HTTPServer, command: list[str]) -> None:
    """Exit 3 (the output cannot be written): the failure is a problem like any other,
    with the problems the build found before it."""
    config = _site(tmp_path, httpserver, [], output={"dir": "feeds/atom"})
    (tmp_path / "feeds").write_text("a file where the output dir goes", encoding="utf-8")
    code, data, err = _cli(config, *command)
    assert code == 3
    assert data["problems"] and data["problems"][-1]["severity"] == "error"
    assert "the previous feeds are kept" in data["problems"][-1]["message"]
    assert any(p["path"] == "empty.md" for p in data["problems"])
    _assert_agree(code, data, err)


def test_beyond_counts_each_problem() -> None:
    """A problem a later build finds twice and the first build once is new once."""
    from aggregator.problems import Problem, Severity, beyond

    a, b = Problem("a.md:1", "x", Severity.WARNING), Problem("b.md:2", "y", Severity.ERROR)
    assert beyond([a, b, a, a], [a, b, a]) == [a]
    assert beyond([b, a], []) == [b, a]
    assert beyond([], [a]) == []


def test_each_service_build_counts_what_loading_its_config_found(tmp_path: Path) -> None:
    """`aggregator run`: the first build after each config load (at start, on SIGHUP)
    counts the load's problems, told just before it, with its own."""
    posts = tmp_path / "posts"
    write_post(posts, "fine.md", "title: Fine\ncategories: [A]\ndate: not a date")
    (posts / "empty.md").write_bytes(b"")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "content": {"dir": "posts"}, "images": {"probe": False},
        "state": {"path": "state/s.sqlite"}, "upstream": [{"opml": "missing.opml"}]}),
        encoding="utf-8")
    service = subprocess.Popen([sys.executable, "-m", "aggregator", "run", "-c", str(config)],
                               cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []

    def build_line(number: int) -> str:
        assert service.stderr is not None
        for line in service.stderr:
            lines.append(line)
            if line.startswith(f"build #{number} "):
                return line
        raise AssertionError("".join(lines))

    try:
        told = 0
        for number, then in [(1, "start"), (2, "config reloaded")]:
            line = build_line(number)
            assert f"({then})" in line
            shown = Counter(m.group(2) for m in PROBLEM.finditer("".join(lines[told:])))
            assert SUMMARY.findall(line) == [(str(shown["error"]), str(shown["warning"]))], \
                "".join(lines)
            assert shown["error"] == 2  # missing.opml and empty.md
            told = len(lines)
            if number == 1:
                service.send_signal(signal.SIGHUP)  # (its handler is set before any build)
    finally:
        service.terminate()
        service.communicate(timeout=60)
