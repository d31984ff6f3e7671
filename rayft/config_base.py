"""What every section of the rayft config shares: the base class that refuses unknown fields, the
error a config raises, and the pattern of an environment variable left unexpanded. A leaf module."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict

Auto = Literal["auto"]
# `${NAME}` or `$NAME` left in a string after expansion: the variable is not set.
UNSET_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file and the field."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
