"""The command line as a new user meets it: silent defaults, typos in the config,
sources waiting after errors, --help, --json and the messages."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import REPO, write_config, write_post
from pytest_httpserver import HTTPServer
from upstream_support import rss, upstream_config

from aggregator.cli import main


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def _posts(tmp_path: Path, count: int = 3) -> None:
    for i in range(count):
        write_post(tmp_path / "posts", f"p{i}.md", f"title: Post {i}\ncategories: [A]\n"
                                                   f"date: 2026-01-0{i + 1} 10:00:00")


def _bare_config(tmp_path: Path, **sections: Any) -> Path:
    data: dict[str, Any] = {"content": {"dir": "posts"}, "state": {"path": "state/s.sqlite"},
                            "images": {"probe": False}, **sections}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


# 1. silent wrong output from defaults

def test_missing_site_url_and_post_url_are_warned_once_per_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _posts(tmp_path)
    write_post(tmp_path / "posts", "linked.md", "title: Linked\nlink: https://x.example/l")
    config = _bare_config(tmp_path)
    for _ in range(2):  # a full build, then an up-to-date one: each run says it once
        code, _, err = _cli(capsys, "build", "-c", str(config))
        assert code == 0
        assert err.count("site.url is not set") == 1
        assert err.count(": warning: 3 entries have no link: set site.post_url") == 1
        assert "; 0 errors, 2 warnings" in err
    code, _, err = _cli(capsys, "check", "-c", str(config))
    assert "3 entries have no link" in err and "site.url is not set" in err


def test_a_config_that_sets_both_gets_no_such_warning(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _posts(tmp_path)
    code, _, err = _cli(capsys, "build", "-c", str(write_config(tmp_path)))
    assert code == 0 and ": warning:" not in err, err


def test_the_shipped_example_builds_clean(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copytree(REPO / "content", tmp_path / "content")
    shutil.copy(REPO / "config.yaml", tmp_path / "config.yaml")
    code, _, err = _cli(capsys, "build", "-c", str(tmp_path / "config.yaml"))
    assert code == 0
    assert ": warning:" not in err and ": error:" not in err, err
    assert "; 0 errors, 0 warnings" in err


# 2. unknown keys stop the run

@pytest.mark.parametrize(("text", "expected"), [
    ("outptu:\n  dir: out\n", "config.yaml:3: error: unknown config section 'outptu'; "
                              "did you mean 'output'?"),
    ("output:\n  max_item: 5\n", "config.yaml:4: error: unknown key 'max_item' in 'output'; "
                                 "did you mean 'max_items'?"),
    ("upstream:\n  - url: https://example.com/f.xml\n    evry: 30m\n",
     "config.yaml:5: error: unknown key 'evry' in an upstream source; did you mean 'every'?"),
    ("upstream:\n  - opml: subs.opml\n    category: x\n",
     "config.yaml:5: error: unknown key 'category' in an upstream source"),
    ("site:\n  max_items: 5\n", "config.yaml:4: error: unknown key 'max_items' in 'site'; "
                                "did you mean 'output.max_items'?"),
    ("websub:\n  hub: []\n", "config.yaml:4: error: unknown key 'hub' in 'websub'; "
                              "did you mean 'hubs'?"),
    ("state:\n  uri: postgresql://x/y\n", "config.yaml:4: error: unknown key 'uri' in 'state'"),
    ("output: feeds\n", "config.yaml:3: error: 'output' must be a mapping of keys"),
])
def test_unknown_keys_exit_2_with_line_and_suggestion(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str) -> None:
    (tmp_path / "posts").mkdir()
    config = tmp_path / "config.yaml"
    config.write_text("content:\n  dir: posts\n" + text, encoding="utf-8")
    code, _, err = _cli(capsys, "build", "-c", str(config))
    assert code == 2
    assert expected in err.replace(str(tmp_path) + "/", ""), err
    assert not (tmp_path / "feeds").exists() and not (tmp_path / "out").exists()


def test_every_key_the_readme_documents_is_accepted(tmp_path: Path) -> None:
    """The README's configuration block (its commented upstream example included)
    loads without an unknown key."""
    from aggregator.config import load_config

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = readme.split("## Configuration", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    block = re.sub(r"^#", "", block, flags=re.MULTILINE)  # the example source lines
    block = block.replace("upstream: []", "upstream:")
    data = yaml.safe_load(block)
    assert {"url", "every", "write_posts", "retention"} <= set(data["upstream"][0])
    assert data["upstream"][1] == {"opml": "subscriptions.opml"}
    (tmp_path / "subscriptions.opml").write_text("<opml version='2.0'><body/></opml>")
    (tmp_path / "config.yaml").write_text(block, encoding="utf-8")
    load_config(tmp_path / "config.yaml")  # raises on an unknown key


@pytest.mark.parametrize("value", ["2026-13-45", "2025-02-30", "0000-01-01", "!!int x"])
def test_a_config_value_yaml_cannot_build_is_a_config_error_not_a_traceback(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str) -> None:
    _posts(tmp_path)
    config = tmp_path / "config.yaml"
    config.write_text(f"site:\n  url: http://x.example/\n  id_date: {value}\n"
                      "content:\n  dir: posts\n", encoding="utf-8")
    code, _, err = _cli(capsys, "build", "-c", str(config))
    assert code == 2
    assert "not valid YAML" in err
    if value != "!!int x":  # a timestamp says its line and value
        assert f"config.yaml:3: error: not valid YAML: '{value}' is not a real date" in err
    assert not (tmp_path / "feeds").exists()


def test_a_missing_config_says_where_it_looked_and_how_to_start(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _cli(capsys, "build", "-c", str(tmp_path / "nowhere.yaml"))
    assert code == 2
    assert "Errno" not in err
    assert f"no config file (looked for {tmp_path / 'nowhere.yaml'})" in err
    assert "example config.yaml" in err and "-c FILE" in err


# 3. fetch after a failure: the waiting sources are named

def test_fetch_says_how_many_sources_wait_after_errors(
        tmp_path: Path, httpserver: HTTPServer, capsys: pytest.CaptureFixture[str]) -> None:
    httpserver.expect_request("/bad.xml").respond_with_data("no", status=500)
    httpserver.expect_request("/good.xml").respond_with_data(
        rss([("g1", "Good")]), content_type="application/rss+xml")
    config = upstream_config(tmp_path, [
        {"url": httpserver.url_for("/bad.xml"), "category": "X", "every": "1h"},
        {"url": httpserver.url_for("/good.xml"), "category": "Y", "every": "1h"}])
    assert _cli(capsys, "fetch", "-c", str(config))[0] == 1
    code, out, err = _cli(capsys, "fetch", "-c", str(config), "--json")
    assert code == 0
    assert re.search(r"polled 0 sources .*; 1 source waits after errors until \S+, "
                     r"1 not due until \S+: `aggregator fetch --all` polls them now", err), err
    waiting = json.loads(out)["poll"]["waiting"]
    assert [(w["url"].rsplit("/", 1)[1], w["errors_in_a_row"]) for w in waiting] == [
        ("bad.xml", 1), ("good.xml", 0)]
    code, out, err = _cli(capsys, "fetch", "--all", "-c", str(config), "--json")
    assert json.loads(out)["poll"]["due"] == 2 and "waits" not in err


# 4. --json for scripts (schema: docs/cli.md)

def test_build_json_is_one_object_with_counts_timings_and_problems(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _posts(tmp_path)
    write_post(tmp_path / "posts", "bad.md", "title: [unclosed")
    config = write_config(tmp_path)
    code, out, _ = _cli(capsys, "build", "--json", "-c", str(config))
    data = json.loads(out)
    assert code == data["exit_code"] == 0
    assert data["command"] == "build" and data["up_to_date"] is False
    assert data["posts"] == {"found": 4, "read": 4, "skipped": 0}
    # 2 nodes: Atom, RSS, JSON Feed and a page each, the OPML, the pages' CSS and script
    assert data["feeds"] == 6 and data["written"] == 11 and data["entries"] == 4
    assert isinstance(data["seconds"], float)
    assert data["warnings"] == len(data["problems"]) == 1
    assert data["problems"][0] | {"message": ""} == {  # (the title's line: 1 is blank)
        "path": "bad.md", "line": 3, "severity": "warning", "message": ""}
    code, out, _ = _cli(capsys, "build", "--json", "-c", str(config))
    assert json.loads(out)["up_to_date"] is True
    assert json.loads(out)["problems"] == data["problems"]


def test_check_json_lists_each_sources_state(
        tmp_path: Path, httpserver: HTTPServer, capsys: pytest.CaptureFixture[str]) -> None:
    httpserver.expect_request("/gone.xml").respond_with_data("", status=410)
    config = upstream_config(tmp_path, [
        {"url": httpserver.url_for("/gone.xml"), "category": "X"},
        {"url": httpserver.url_for("/new.xml"), "category": "X", "enabled": False}])
    _cli(capsys, "fetch", "-c", str(config))
    code, out, _ = _cli(capsys, "check", "--json", "-c", str(config))
    data = json.loads(out)
    assert code == data["exit_code"] == 1
    assert [(s["state"], s["last_status"]) for s in data["sources"]] == [
        ("disabled", 410), ("disabled in config", None)]
    assert data["failing_sources"] == 1
    assert data["problems"][0]["path"] == httpserver.url_for("/gone.xml")
    assert data["problems"][0]["line"] is None


def test_config_errors_are_json_too(tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("outptu: {}\n")
    code, out, _ = _cli(capsys, "check", "-c", str(config), "--json")
    data = json.loads(out)
    assert code == data["exit_code"] == 2
    assert data["problems"] == [{"path": str(config), "line": 1, "severity": "error",
                                 "message": "unknown config section 'outptu'; "
                                            "did you mean 'output'?"}]


# 5. help that helps

def test_help_points_to_docs_that_exist_and_lists_exit_codes(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "docs/cli.md" in capsys.readouterr().out
    assert (REPO / "docs" / "cli.md").is_file()
    for command in (["build"], ["check"], ["fetch"], ["run"], ["opml", "export"]):
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        text = capsys.readouterr().out
        assert "exit codes: 0 " in text, command
    with pytest.raises(SystemExit):
        main(["opml", "export", "--help"])
    assert "-o OUTPUT, --output OUTPUT" in capsys.readouterr().out


def test_config_and_log_level_go_on_either_side_of_the_command(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _posts(tmp_path)
    config = str(write_config(tmp_path))
    assert _cli(capsys, "-c", config, "build")[0] == 0
    code, _, err = _cli(capsys, "build", "-c", config, "--log-level", "warning")
    assert code == 0 and "nothing changed" not in err
    code, _, err = _cli(capsys, "--log-level", "warning", "build", "-c", config)
    assert code == 0 and "nothing changed" not in err


# 8. files

def test_opml_export_follows_the_umask_like_the_feeds(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = upstream_config(tmp_path, [{"url": "https://example.com/f.xml"}])
    out = tmp_path / "subs.opml"
    assert _cli(capsys, "opml", "export", "-c", str(config), "-o", str(out))[0] == 0
    mask = _umask()
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask


def _umask() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.umask(0))"],
                              capture_output=True, text=True, check=True).stdout)


# 7. messages: one per problem, paths relative to the content dir

def test_the_warnings_fixture_prints_exactly_its_expected_lines(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fixture = REPO / "tests" / "data" / "warnings"
    shutil.copytree(fixture, tmp_path / "w", ignore=shutil.ignore_patterns("feeds", "state"))
    code, _, err = _cli(capsys, "build", "-c", str(tmp_path / "w" / "config.yaml"))
    assert code == 1
    lines = [line for line in err.splitlines() if not line.startswith("published ")]
    assert lines == (fixture / "expected.txt").read_text(encoding="utf-8").splitlines()


# 4. progress: on a terminal only, and never loaded for a build with nothing to do

def _build_on(stream: Any, config: Path, monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    from aggregator import progress

    monkeypatch.setattr(progress, "SHOW_AFTER_SECONDS", 0.0)
    monkeypatch.setattr(sys, "stderr", stream)
    try:
        return main(["build", "-c", str(config), *args])
    finally:
        progress.show(False)


def _drain(fd: int) -> str:
    """Everything the terminal has to give, until it has been quiet for 0.2 s."""
    import os
    import select

    data = b""
    while select.select([fd], [], [], 0.2)[0]:
        data += os.read(fd, 1 << 16)
    return data.decode()


def test_progress_shows_on_a_terminal_only_and_not_with_quiet(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fcntl
    import os
    import pty
    import struct
    import termios

    _posts(tmp_path)
    config = write_config(tmp_path)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    terminal = open(slave, "w", encoding="utf-8", buffering=1)  # noqa: SIM115
    try:
        assert terminal.isatty()
        assert _build_on(terminal, config, monkeypatch) == 0
        shown = _drain(master)
        assert "feeds written" in shown and "published 6 feeds" in shown
        (tmp_path / "feeds" / "atom.xml").unlink()
        assert _build_on(terminal, config, monkeypatch, "--quiet") == 0
        assert "feeds written" not in _drain(master)
    finally:
        terminal.close()
        os.close(master)
    piped = tmp_path / "stderr.txt"
    (tmp_path / "feeds" / "atom.xml").unlink()
    with open(piped, "w", encoding="utf-8") as stream:
        assert _build_on(stream, config, monkeypatch) == 0
    assert "feeds written" not in piped.read_text() and "published 6 feeds" in \
        piped.read_text()


def test_an_up_to_date_build_never_imports_the_progress_library(tmp_path: Path) -> None:
    _posts(tmp_path)
    config = write_config(tmp_path)
    script = ("import sys\nfrom aggregator import progress\n"
              "from aggregator.config import load_config\nfrom aggregator.pipeline import build\n"
              "progress.show(True); progress.SHOW_AFTER_SECONDS = 0\n"
              f"report = build(load_config({str(config)!r}))\n"
              "print(report.up_to_date, 'tqdm' in sys.modules)\n")

    def run() -> str:
        return subprocess.run([sys.executable, "-c", script], check=True, text=True,
                              capture_output=True).stdout.strip()
    assert run() == "False True"  # a first build shows its feeds being written
    assert run() == "True False"


# 8. the record of published files lives in the state file, not in the output dir

def _two_categories(tmp_path: Path) -> Path:
    write_post(tmp_path / "posts", "a.md", "title: A\ncategories: [Keep]")
    write_post(tmp_path / "posts", "b.md", "title: B\ncategories: [Gone]")
    return write_config(tmp_path)


def _with_a_persons_feed(tmp_path: Path) -> Path:
    """The output dir, holding `yours/atom.xml`, which a person put there."""
    out = tmp_path / "feeds"
    (out / "yours").mkdir(parents=True)
    (out / "yours" / "atom.xml").write_text("a person put this here")
    return out


def test_no_manifest_is_published_and_vanished_feeds_still_go(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _two_categories(tmp_path)
    out = tmp_path / "feeds"
    assert _cli(capsys, "build", "-c", str(config))[0] == 0
    (out / "mine.txt").write_text("not ours")
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
    # the build cache is disposable: the record survives its deletion
    (tmp_path / "state" / "test.sqlite.cache").unlink()
    (tmp_path / "posts" / "b.md").unlink()
    assert _cli(capsys, "build", "-c", str(config))[0] == 0
    assert not (out / "gone").exists() and (out / "keep" / "atom.xml").is_file()
    assert (out / "mine.txt").read_text() == "not ours"
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


def test_an_old_manifest_is_read_once_then_deleted(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config, out = _two_categories(tmp_path), _with_a_persons_feed(tmp_path)
    (out / "old").mkdir(parents=True)
    (out / "old" / "atom.xml").write_text("an earlier version wrote this")
    (out / ".aggregator-manifest").write_text("old/atom.xml\natom.xml\n")
    assert _cli(capsys, "build", "-c", str(config))[0] == 0
    assert not (out / ".aggregator-manifest").exists()
    assert not (out / "old").exists()
    assert (out / "yours" / "atom.xml").read_text() == "a person put this here"
    (tmp_path / "posts" / "b.md").unlink()  # the record goes on from the manifest's
    assert _cli(capsys, "build", "-c", str(config))[0] == 0
    assert not (out / "gone").exists() and not (out / ".aggregator-manifest").exists()
    assert (out / "yours" / "atom.xml").is_file()


# 6. --log-level debug: the program's decisions, not the libraries' chatter

def test_debug_shows_our_decisions_and_no_library_debug(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_post(tmp_path / "posts", "md.md", "title: Markdown\ncategories: [A]",
               body="# Heading\n\nSome *markdown* text.\n")
    config = write_config(tmp_path)
    code, _, err = _cli(capsys, "build", "-c", str(config), "--log-level", "debug")
    assert code == 0
    assert "not up to date: no complete build recorded" in err
    assert "feed a/atom.xml: written (new feed; entries: 1)" in err
    assert "StateBlock" not in err  # markdown-it's debug lines stay quiet
    (tmp_path / "posts" / "md.md").write_text("---\ntitle: Edited\ncategories: [A]\n---\nx\n")
    code, _, err = _cli(capsys, "build", "-c", str(config), "--log-level", "debug")
    assert "1 posts changed: md.md" in err
    assert "feed a/atom.xml: written (its entries or head changed; entries: 1)" in err
    (tmp_path / "posts" / "md.md").write_text("---\ntitle: Again\n---\n# x\n")
    code, _, err = _cli(capsys, "build", "-c", str(config), "--log-level", "debug",
                        "--library-log-level", "debug")
    assert code == 0 and "StateBlock" in err  # asked for


def test_the_service_warns_about_defaults_at_start_and_on_reload_only(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import time

    from aggregator.config import load_config
    from aggregator.service.metrics import ServiceStats
    from aggregator.service.notify import Notifier
    from aggregator.service.runner import BuildWorker

    _posts(tmp_path)
    path = _bare_config(tmp_path)
    current = [load_config(path)]
    worker = BuildWorker(lambda: current[0], ServiceStats(), Notifier({}))
    worker.start()

    def build(reason: str) -> int:
        before = worker.stats.last_build
        worker.request(reason, None)
        deadline = time.monotonic() + 60
        while worker.stats.last_build == before:  # set once the build is told
            assert time.monotonic() < deadline
            time.sleep(0.02)
        return sum("3 entries have no link" in r.getMessage() for r in caplog.records)

    try:
        with caplog.at_level("WARNING", logger="aggregator"):
            assert build("start") == 1
            assert build("file events") == 1  # the same config: said already
            current[0] = load_config(path)  # SIGHUP: a new load
            assert build("config reloaded") == 2
    finally:
        worker.stop()


def test_an_old_manifest_that_is_a_link_is_not_followed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config, out = _two_categories(tmp_path), _with_a_persons_feed(tmp_path)
    elsewhere = tmp_path / "list.txt"
    elsewhere.write_text("yours/atom.xml\n")
    (out / ".aggregator-manifest").symlink_to(elsewhere)
    assert _cli(capsys, "build", "-c", str(config))[0] == 0
    assert (out / "yours" / "atom.xml").read_text() == "a person put this here"
    assert elsewhere.read_text() == "yours/atom.xml\n"
