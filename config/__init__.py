"""Configuration: the schema (frozen models) and the loader; ConfigError is re-exported."""

from config.load import config_from_mapping, load_config
from config.schema import GraygateConfig
from graygate.errors import ConfigError

__all__ = ["ConfigError", "GraygateConfig", "config_from_mapping", "load_config"]
