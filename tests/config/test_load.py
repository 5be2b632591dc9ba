"""Loading and validating graygate.yaml, with GRAYGATE_* overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from config import ConfigError, config_from_mapping, load_config

REPO = Path(__file__).resolve().parents[2]
BASE = {
    "run": "r1",
    "upstreams": {"primary": "http://127.0.0.1:8081", "canary": "http://127.0.0.1:8082"},
}


def test_example_file_is_valid() -> None:
    cfg = load_config(REPO / "config" / "graygate.example.yaml", env={})
    assert cfg.run == "order-service-v2"
    assert cfg.upstreams.primary == "http://127.0.0.1:8081"
    assert cfg.compare.endpoints[0].tolerance["$.total"].abs == 0.01


def test_demo_file_is_valid() -> None:
    cfg = load_config(REPO / "config" / "demo.yaml", env={})
    assert cfg.mirror.allow_side_effects


def test_defaults() -> None:
    cfg = config_from_mapping(BASE, env={})
    assert cfg.listen == "0.0.0.0:8080"
    assert cfg.mirror.mirrored_methods == {"GET", "HEAD", "OPTIONS"}
    assert cfg.database.url is None
    assert cfg.admin.token is None


def test_models_are_frozen() -> None:
    cfg = config_from_mapping(BASE, env={})
    with pytest.raises(ValueError):
        cfg.run = "other"  # type: ignore[misc]


def test_env_overrides_nested_keys() -> None:
    cfg = config_from_mapping(
        BASE,
        env={
            "GRAYGATE_DATABASE_URL": "postgresql://u:secret@db:5432/gg",
            "GRAYGATE_MIRROR_MAX_IN_FLIGHT": "9",
            "GRAYGATE_MIRROR_SAMPLE": "0.25",
            "GRAYGATE_UPSTREAMS_CANARY": "http://10.0.0.2:9000",
            "GRAYGATE_ADMIN_TOKEN": "t0ken",
        },
    )
    assert cfg.database.url == "postgresql+asyncpg://u:secret@db:5432/gg"
    assert cfg.mirror.max_in_flight == 9
    assert cfg.mirror.sample == 0.25
    assert cfg.upstreams.canary == "http://10.0.0.2:9000"
    assert cfg.admin.token == "t0ken"


def test_token_env_is_configurable() -> None:
    data = {**BASE, "admin": {"token_env": "MY_TOKEN"}}
    cfg = config_from_mapping(data, env={"MY_TOKEN": "abc", "GRAYGATE_ADMIN_TOKEN": "no"})
    assert cfg.admin.token == "abc"


def test_token_is_never_read_from_the_file() -> None:
    with pytest.raises(ConfigError) as err:
        config_from_mapping({**BASE, "admin": {"token": "x"}}, env={})
    assert err.value.key == "admin.token"


def test_bad_env_value_names_the_key() -> None:
    with pytest.raises(ConfigError) as err:
        config_from_mapping(BASE, env={"GRAYGATE_MIRROR_SAMPLE": "lots"})
    assert err.value.key == "mirror.sample"
    assert "'lots'" in str(err.value)


@pytest.mark.parametrize(
    ("data", "key", "fragment"),
    [
        ({**BASE, "mirorr": {}}, "mirorr", "unknown key"),
        ({**BASE, "mirror": {"sample": 2}}, "mirror.sample", "2"),
        ({**BASE, "mirror": {"timeout_ms": "soon"}}, "mirror.timeout_ms", "'soon'"),
        ({"run": "r", "upstreams": {"primary": "http://a:1"}}, "upstreams.canary", "required"),
        (
            {"run": "r", "upstreams": {"primary": "ftp://a", "canary": "http://b:1"}},
            "upstreams.primary",
            "'ftp://a'",
        ),
        ({**BASE, "listen": "localhost"}, "listen", "host:port"),
        ({**BASE, "mirror": {"methods": ["POST"]}}, "mirror", "allow_side_effects"),
        ({**BASE, "mirror": {"methods": ["FETCH"]}}, "mirror.methods", "FETCH"),
        ({**BASE, "database": {"url": "mysql://x/y"}}, "database.url", "postgresql"),
        ({**BASE, "run": "has space"}, "run", "'has space'"),
        (
            {**BASE, "compare": {"endpoints": [{"match": "GET /x", "tolerance": {"$.a": {}}}]}},
            "compare.endpoints[0].tolerance.$.a",
            "abs or rel",
        ),
        ({**BASE, "gray": {"serve_canary": [{"sticky": "X-User"}]}}, "gray.serve_canary[0]", ""),
    ],
)
def test_bad_values_name_key_and_value(data: dict[str, object], key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_mapping(data, env={})
    assert err.value.key == key
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_database_password_is_censored_in_errors() -> None:
    with pytest.raises(ConfigError) as err:
        config_from_mapping({**BASE, "database": {"url": "mysql://user:hunter2@db/x"}}, env={})
    assert "hunter2" not in str(err.value)


def test_bad_yaml_names_the_line(tmp_path: Path) -> None:
    p = tmp_path / "g.yaml"
    p.write_text("run: r\nupstreams: [\n")
    with pytest.raises(ConfigError) as err:
        load_config(p, env={})
    assert "line" in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "nope.yaml", env={})
    assert "nope.yaml" in str(err.value)
