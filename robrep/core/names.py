"""Names that become paths or partition folders (model_id, the experiment's name, kinds): one documented
pattern, checked at the door, so no name can leave its folder or change when read back."""

from __future__ import annotations

import re

from robrep.core.errors import ConfigError

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_NAME = re.compile(NAME_PATTERN)


def check_name(value: str, what: str) -> str:
    """value if it matches NAME_PATTERN (letters, digits, '.', '_', '-'; starts with a letter or digit; at most
    128 characters), else ConfigError naming `what`."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ConfigError(f"{what}={value!r} is not a valid name: use letters, digits, '.', '_' and '-', starting "
                          f"with a letter or digit, at most 128 characters ({NAME_PATTERN})")
    return value
