"""Configuration: the typed model (:mod:`.schema`) and the TOML loader (:mod:`.loader`)."""

from agent.config.loader import ConfigError, load_config, parse_config
from agent.config.schema import Config

__all__ = ["Config", "ConfigError", "load_config", "parse_config"]
