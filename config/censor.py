"""Secrets out of configurations before they are stored, shown or printed.

One function for a whole configuration document, :func:`censor_config`, and one for a
single string, :func:`censor_url`. What is censored:

- the password of any URL's userinfo (``postgresql://user:***@host/db``); a userinfo
  without a password is kept for a database URL (it is the user name) and replaced for
  any other scheme (``https://***@host``: a bare token is the usual use);
- the values of URL query parameters named like a secret (``?password=***``,
  ``&access_token=***``);
- the value of every mapping key named like a secret (``password``, ``db_password``,
  ``secret``, ``client_secret``, ``token``, ``api_key``, ``private_key``, ``credentials``),
  except keys ending in ``_env``, which name an environment variable rather than hold
  a secret (``admin.token_env``). Only identifier-like keys are considered: a JSON path
  used as a key (``tolerance: {"$.token": ...}``) is a rule, not a secret.

Pure, no project imports: ``store`` and the CLI use it alike.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["CENSORED", "censor_config", "censor_url", "is_secret_key", "named_like_a_secret"]

logger = logging.getLogger(__name__)

CENSORED: Final = "***"

# scheme://userinfo@ : userinfo runs to the last "@" before the path (passwords may hold "@").
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*)://(?P<userinfo>[^/?#\s]*)@")
_SECRET_WORDS: Final = frozenset(
    {"password", "passwd", "pass", "pwd", "passphrase", "secret", "token", "apikey",
     "credential", "credentials", "signature"}
)  # fmt: skip
# ... also inside a word: sslpassword, accesstoken, clientsecret
_SECRET_PARTS: Final = ("password", "passwd", "secret", "token", "apikey")
_SECRET_PAIRS: Final = frozenset({("api", "key"), ("private", "key"), ("access", "key"),
                                  ("auth", "key"), ("session", "key")})  # fmt: skip
_WORDS = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
_SECRET_PARAM = re.compile(r"(?P<name>[?&;](?P<key>[A-Za-z0-9_.\-]+)=)(?P<value>[^&#;\s]*)")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")
_DB_SCHEMES = ("postgres", "postgresql", "mysql", "mariadb", "redis", "mongodb", "amqp")


def named_like_a_secret(name: str) -> bool:
    """Whether a name (a key, a header, a form field, a query parameter) is named like a
    secret: a word of it is password, secret, token, api key...; ``bypass`` is not."""
    words = [w.lower() for w in _WORDS.findall(name)]
    if any(w in _SECRET_WORDS or any(p in w for p in _SECRET_PARTS) for w in words):
        return True
    return any(pair in _SECRET_PAIRS for pair in itertools.pairwise(words))


def is_secret_key(key: str) -> bool:
    """Whether a mapping key is named like a secret (see the module docstring)."""
    if not _IDENTIFIER.match(key) or key.lower().endswith("_env"):
        return False
    return named_like_a_secret(key)


def _userinfo(match: re.Match[str]) -> str:
    scheme = match.group("scheme")
    user, sep, _ = match.group("userinfo").partition(":")
    if sep:
        return f"{scheme}://{user}:{CENSORED}@"
    base = scheme.lower().partition("+")[0]
    if base in _DB_SCHEMES:
        return f"{scheme}://{user}@"
    return f"{scheme}://{CENSORED}@"


def censor_url(value: str) -> str:
    """``value`` with the secrets of any URL in it replaced by ``***`` (a string with no
    URL, or a malformed one, is handled alike: this never raises)."""
    if "@" in value:
        value = _USERINFO.sub(_userinfo, value)
    if "=" in value:
        value = _SECRET_PARAM.sub(
            lambda m: (
                m.group("name") + CENSORED if named_like_a_secret(m.group("key")) else m.group(0)
            ),
            value,
        )
    return value


def _records(value: Any) -> bool:
    """A list of mappings (``admin.tokens: [{name, role, token_env}]``), or an empty one:
    censored key by key, not as a whole, so its names and roles stay readable."""
    return isinstance(value, (list, tuple)) and all(isinstance(v, Mapping) for v in value)


def censor_config(data: Any) -> Any:
    """A copy of a configuration document (``model_dump(mode="json")``, parsed YAML) with
    its secrets censored; the shape is kept (a censored value is the string ``***``, a
    ``None`` stays ``None``)."""
    if isinstance(data, Mapping):
        out: dict[Any, Any] = {}
        for key, value in data.items():
            if (
                isinstance(key, str)
                and is_secret_key(key)
                and value is not None
                and not _records(value)
            ):
                out[key] = CENSORED
            else:
                out[key] = censor_config(value)
        return out
    if isinstance(data, (list, tuple)):
        return [censor_config(v) for v in data]
    if isinstance(data, str):
        return censor_url(data)
    return data
