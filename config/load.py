"""Read ``graygate.yaml``, apply ``GRAYGATE_*`` environment overrides, validate once.

An environment variable names a key by its path with ``_`` between the parts, upper case:
``GRAYGATE_DATABASE_URL`` sets ``database.url``, ``GRAYGATE_MIRROR_MAX_IN_FLIGHT`` sets
``mirror.max_in_flight``. Its value is read as YAML (``0.5``, ``true``, ``[GET, HEAD]``).
The admin token comes only from the variable that ``admin.token_env`` names.
"""

from __future__ import annotations

import logging
import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from config.censor import CENSORED, censor_config, is_secret_key
from config.schema import GraygateConfig
from graygate.errors import ConfigError, one_line

__all__ = ["ENV_PREFIX", "config_from_mapping", "load_config"]

logger = logging.getLogger(__name__)

ENV_PREFIX = "GRAYGATE_"
# Variables under the prefix that are not configuration keys.
_NOT_KEYS = frozenset(
    {"GRAYGATE_CONFIG", "GRAYGATE_DATA_DIR", "GRAYGATE_LOG_LEVEL", "GRAYGATE_LOG_FORMAT"}
)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside ``annotation`` (``Model``, ``Model | None``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _key_path(model: type[BaseModel], tokens: list[str]) -> list[str] | None:
    """Resolve ``["MIRROR", "MAX", "IN", "FLIGHT"]`` to ``["mirror", "max_in_flight"]``."""
    for i in range(len(tokens), 0, -1):
        name = "_".join(tokens[:i]).lower()
        field = model.model_fields.get(name)
        if field is None:
            continue
        if i == len(tokens):
            return [name]
        sub = _model_of(field.annotation)
        if sub is not None:
            rest = _key_path(sub, tokens[i:])
            if rest is not None:
                return [name, *rest]
    return None


def _apply_env(data: dict[str, Any], env: Mapping[str, str], token_envs: frozenset[str]) -> None:
    for var, raw in sorted(env.items()):
        if not var.startswith(ENV_PREFIX) or var in _NOT_KEYS or var in token_envs:
            continue
        path = _key_path(GraygateConfig, var[len(ENV_PREFIX) :].split("_"))
        if path is None:
            logger.warning("environment variable %s names no configuration key; ignored", var)
            continue
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        if isinstance(value, (int, float)) and path[-1] in ("url", "run"):
            value = raw
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[path[-1]] = value


def _named_tokens(admin: Any) -> list[dict[str, Any]]:
    """``admin.tokens`` as written (dicts), refusing a token value in the file."""
    tokens = admin.get("tokens") if isinstance(admin, dict) else None
    if not isinstance(tokens, list):
        return []
    out = [t for t in tokens if isinstance(t, dict)]
    for i, t in enumerate(out):
        if "token" in t:
            raise ConfigError(
                f"admin.tokens[{i}].token",
                "is not read from the file; put the token in the environment variable "
                "named by its token_env",
            )
    return [t for t in out if "token_env" in t]


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after", "function-before") or "[" in str(part):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out


def _censor(key: str, value: Any) -> str:
    """A bad value, fit for an error message: secrets censored, at most 120 characters."""
    last = key.rpartition(".")[2]
    text = repr(CENSORED if is_secret_key(last) and value is not None else censor_config(value))
    return text if len(text) <= 120 else text[:117] + "..."


def config_from_mapping(
    data: Mapping[str, Any], env: Mapping[str, str] | None = None
) -> GraygateConfig:
    """Validate ``data`` (a parsed YAML document) with ``env``'s overrides applied."""
    env = os.environ if env is None else env
    if not isinstance(data, Mapping):
        raise ConfigError("", "the configuration must be a YAML mapping of keys to values")
    merged: dict[str, Any] = {k: v for k, v in data.items()}
    admin = merged.get("admin")
    if isinstance(admin, dict) and "token" in admin:
        raise ConfigError(
            "admin.token",
            "is not read from the file; put the token in the environment "
            "variable named by admin.token_env",
        )
    token_env = (
        (admin or {}).get("token_env", "GRAYGATE_ADMIN_TOKEN")
        if isinstance(admin, dict)
        else "GRAYGATE_ADMIN_TOKEN"
    )
    named = _named_tokens(admin)
    _apply_env(merged, env, frozenset({str(token_env), *(str(t["token_env"]) for t in named)}))
    token = env.get(str(token_env)) or None
    if token is not None:
        merged["admin"] = {**(merged.get("admin") or {}), "token": token}
    if named:
        # Each named token from the variable its token_env names (never from the file).
        admin_now = dict(merged.get("admin") or {})
        admin_now["tokens"] = [
            {**t, "token": env.get(str(t["token_env"])) or None}
            if isinstance(t, dict) and "token_env" in t
            else t
            for t in admin_now.get("tokens") or []
        ]
        merged["admin"] = admin_now
    try:
        return GraygateConfig.model_validate(merged)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = _loc(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            raise ConfigError(key, "unknown key") from None
        if err["type"] == "missing":
            raise ConfigError(key, "is required") from None
        more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        raise ConfigError(key, f"{_censor(key, err.get('input'))}: {msg}{more}") from None


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> GraygateConfig:
    """Load and validate the YAML file at ``path``; ConfigError names what is wrong."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("", f"cannot read {p}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise ConfigError(
            "",
            f"{p}: line {line}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
            f"{exc.start}); save the file as UTF-8",
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or one_line(exc)
        raise ConfigError("", f"{p}:{where}: not valid YAML: {problem}") from None
    return config_from_mapping(data or {}, env)
