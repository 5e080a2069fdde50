"""state.url: the store on PostgreSQL; its config checks (no server needed here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from aggregator.config import ConfigError, load_config


def _config(tmp_path: Path, state: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f'site: {{url: "https://example.org/"}}\nstate: {state}\n')
    return path


def test_state_url_is_read(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, '{url: "postgresql://agg@db.example/feeds"}'))
    assert config.state_url == "postgresql://agg@db.example/feeds"


def test_state_url_absent_keeps_the_sqlite_file(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, "{path: s.sqlite}"))
    assert config.state_url is None
    assert config.state_path == (tmp_path / "s.sqlite").resolve()


@pytest.mark.parametrize(("state", "said"), [
    ('{url: "postgresql://a@b/c", path: s.sqlite}', "both set"),
    ('{url: "mysql://a@b/c"}', "must be a PostgreSQL URL"),
    ("{url: 5}", "state.url must be str"),
])
def test_a_bad_state_url_is_a_config_error_with_its_line(tmp_path: Path, state: str,
                                                         said: str) -> None:
    with pytest.raises(ConfigError, match=said) as caught:
        load_config(_config(tmp_path, state))
    assert "config.yaml:2:" in str(caught.value)
