"""Secrets censored in configurations (issue 10, item 10): one function for a document."""

from __future__ import annotations

import pytest

from config.censor import CENSORED, censor_config, censor_url, is_secret_key
from config.load import config_from_mapping
from graygate.errors import ConfigError

UPSTREAMS = {"primary": "http://127.0.0.1:1", "canary": "http://127.0.0.1:2"}


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "postgresql+asyncpg://postgres:hunter2@db:5432/g",
            "postgresql+asyncpg://postgres:***@db:5432/g",
        ),
        # a password holding "@": all of it goes
        ("postgresql://u:p@ss@db/g", "postgresql://u:***@db/g"),
        ("postgresql://postgres@db/g", "postgresql://postgres@db/g"),  # a user name only
        ("https://ghp_token@host/x", "https://***@host/x"),  # a bare token
        ("http://u:pw@h:1/x", "http://u:***@h:1/x"),
        (
            "postgresql://u@h/d?sslpassword=pw&sslmode=require",
            "postgresql://u@h/d?sslpassword=***&sslmode=require",
        ),
        ("http://h/x?access_token=abc&b=1", "http://h/x?access_token=***&b=1"),
        ("postgresql://postgres@[::1:5432/x", "postgresql://postgres@[::1:5432/x"),  # malformed
        ("$.password", "$.password"),
        ("plain text", "plain text"),
    ],
)
def test_censor_url(url: str, expected: str) -> None:
    assert censor_url(url) == expected


def test_secret_keys() -> None:
    for key in ("password", "db_password", "secret", "client_secret", "token", "api_key",
                "apiKey", "private_key", "credentials", "passwd"):  # fmt: skip
        assert is_secret_key(key), key
    for key in ("token_env", "url", "run", "$.token", "$..password", "sample", "bypass"):
        assert not is_secret_key(key), key


def test_censor_config_keeps_the_shape() -> None:
    doc = {
        "database": {"url": "postgresql://u:hunter2@db/x", "pool_size": 10},
        "admin": {"token_env": "GRAYGATE_ADMIN_TOKEN", "token": None},
        "writes": [{"primary": {"url": "postgresql://r:pw2@db/o", "password": "pw3"}}],
        "compare": {"defaults": {"tolerance": {"$.token": {"abs": 0.1}}}},
        "redact": {"json_fields": ["$..password"]},
    }
    out = censor_config(doc)
    text = repr(out)
    for secret in ("hunter2", "pw2", "pw3"):
        assert secret not in text
    assert out["database"] == {"url": "postgresql://u:***@db/x", "pool_size": 10}
    assert out["admin"] == {"token_env": "GRAYGATE_ADMIN_TOKEN", "token": None}
    assert out["writes"][0]["primary"]["password"] == CENSORED
    assert out["compare"] == doc["compare"]  # a JSON path as a key is a rule
    assert out["redact"] == doc["redact"]
    assert doc["database"]["url"] == "postgresql://u:hunter2@db/x"  # the input is untouched


def test_censored_config_still_validates() -> None:
    # What is stored (runs.config) must still read back as a configuration.
    cfg = config_from_mapping(
        {"run": "r", "upstreams": UPSTREAMS, "database": {"url": "postgresql://u:pw@db/x"}},
        env={},
    )
    again = config_from_mapping(censor_config(cfg.model_dump(mode="json")), env={})
    assert again.database.url == "postgresql+asyncpg://u:***@db/x"


@pytest.mark.parametrize("key", ["primary", "canary", "secondary"])
def test_upstream_userinfo_is_rejected_naming_the_key(key: str) -> None:
    upstreams = {**UPSTREAMS, key: "http://admin:hunter2@127.0.0.1:3"}
    with pytest.raises(ConfigError) as info:
        config_from_mapping({"run": "r", "upstreams": upstreams}, env={})
    msg = str(info.value)
    assert f"upstreams.{key}" in msg and "credentials" in msg
    assert "hunter2" not in msg
    with pytest.raises(ConfigError, match="credentials"):
        config_from_mapping(
            {"run": "r", "upstreams": {**UPSTREAMS, key: "http://token@127.0.0.1:3"}}, env={}
        )


def test_other_http_urls_reject_userinfo_too() -> None:
    with pytest.raises(ConfigError, match=r"runtime\.canary\.expvar.*credentials"):
        config_from_mapping(
            {
                "run": "r",
                "upstreams": UPSTREAMS,
                "runtime": {"canary": {"expvar": "http://u:pw@127.0.0.1:3/debug/vars"}},
            },
            env={},
        )


def test_error_messages_censor_secrets() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_mapping(
            {"run": "r", "upstreams": UPSTREAMS, "database": {"url": "mysql://u:hunter2@h/x"}},
            env={},
        )
    assert "hunter2" not in str(info.value) and "database.url" in str(info.value)
