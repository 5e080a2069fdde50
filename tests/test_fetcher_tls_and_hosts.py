"""The fetcher's TLS roots and its host names, against real servers on 127.0.0.1: an
HTTPS server with a certificate of its own (made by openssl), and a server redirecting
to a host name that is not valid punycode."""

from __future__ import annotations

import http.server
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import certifi
import pytest
from pytest_httpserver import HTTPServer
from upstream_support import rss, run, titles, upstream_config

from aggregator.sources.upstream.guard import tls_context
from aggregator.sources.upstream.http import Fetcher, FetchError, Limits

FEED = rss([("a1", "Alpha")])


class _Feed(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        self.send_response(200)
        self.send_header("Content-Type", "application/rss+xml")
        self.send_header("Content-Length", str(len(FEED)))
        self.end_headers()
        self.wfile.write(FEED)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def https_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(URL of a feed over HTTPS, the certificate file its clients must trust)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Feed)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/feed", cert
    finally:
        server.shutdown()
        server.server_close()


def test_tls_trusts_certifi_roots_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    context = tls_context()
    roots = ssl.create_default_context(cafile=certifi.where()).get_ca_certs()
    assert context.get_ca_certs() == roots and len(roots) > 50
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_a_certificate_outside_the_roots_is_refused(https_server: tuple[str, Path],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    url, _cert = https_server
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    with Fetcher(Limits(timeout=5, deadline=10, allow_private=True)) as fetcher, \
            pytest.raises(FetchError, match="CERTIFICATE_VERIFY_FAILED"):
        fetcher.get(url)


def test_ssl_cert_file_and_dir_name_the_roots(https_server: tuple[str, Path],
                                              monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    url, cert = https_server
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    with Fetcher(Limits(timeout=5, deadline=10, allow_private=True)) as fetcher:
        assert fetcher.get(url).body == FEED
    monkeypatch.delenv("SSL_CERT_FILE")
    folder = tmp_path / "roots"
    folder.mkdir()
    shutil.copy(cert, folder / "ours.pem")
    subprocess.run(["openssl", "rehash", str(folder)], check=True, capture_output=True)
    monkeypatch.setenv("SSL_CERT_DIR", str(folder))
    with Fetcher(Limits(timeout=5, deadline=10, allow_private=True)) as fetcher:
        assert fetcher.get(url).body == FEED


BAD_PUNYCODE = "http://xn--a.example/feed"  # `xn--a` decodes to U+0080: no IDNA label


def test_a_host_that_is_not_valid_punycode_fails_its_source_only(
        tmp_path: Path, httpserver: HTTPServer, capsys: pytest.CaptureFixture[str]) -> None:
    httpserver.expect_request("/good").respond_with_data(FEED, content_type="text/xml")
    httpserver.expect_request("/moved").respond_with_data(
        "", status=302, headers={"Location": BAD_PUNYCODE})
    config = upstream_config(tmp_path, [
        {"url": BAD_PUNYCODE, "category": "Bad"},
        {"url": httpserver.url_for("/moved"), "category": "Moved"},
        {"url": httpserver.url_for("/good"), "category": "Good"}])
    code, err = run(config, capsys, "fetch", "--all")
    assert titles(tmp_path) == ["Alpha"]  # the poll went on past the two
    assert f"{BAD_PUNYCODE}: " in err and httpserver.url_for("/moved") + ": " in err, err
    assert code != 0
