"""The admin API's exposure check, run at start before anything is opened.

Its own module so that ``graygate serve`` can run it before anything imports
prometheus_client: the metrics' multiprocess mode is chosen when that library is first
imported, and serve decides it only once it knows whether it starts child processes.
"""

from __future__ import annotations

from config.schema import GraygateConfig, is_loopback_listen
from graygate.errors import ConfigError

__all__ = ["check_admin_exposure"]


def check_admin_exposure(cfg: GraygateConfig) -> None:
    """ConfigError when the admin API would listen beyond loopback without a token (and
    ``admin.allow_open`` is not set)."""
    admin = cfg.admin
    if admin.any_token or admin.allow_open or is_loopback_listen(admin.listen):
        return
    raise ConfigError(
        "admin.listen",
        f"{admin.listen!r} is reachable from other hosts and no admin token is set: "
        f"set {admin.token_env}, listen on 127.0.0.1, or set admin.allow_open: true",
    )
