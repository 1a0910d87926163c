"""Cross-field checks shared by several config sections (devices, sinks).

Each raises ValueError("key: message"); the config layer turns that into the key path.
"""

from __future__ import annotations

__all__ = ["check_backoff", "check_credentials", "check_valid_range", "effective_security_mode"]


def check_credentials(username: str | None, password_env: str | None, password_file: object) -> None:
    """A username needs exactly one password source; the password never sits in the config."""
    if username is None:
        for key, value in (("password_env", password_env), ("password_file", password_file)):
            if value is not None:
                raise ValueError(f"{key}: has no meaning without username")
    elif (password_env is None) == (password_file is None):
        raise ValueError("password_env: give exactly one of password_env and password_file "
                         "for username (the password itself never goes in the config)")


def check_backoff(reconnect_min: float, reconnect_max: float) -> None:
    if reconnect_max < reconnect_min:
        raise ValueError(f"reconnect_max: {reconnect_max} is less than reconnect_min {reconnect_min}")


def check_valid_range(valid_min: float | None, valid_max: float | None) -> None:
    if valid_min is not None and valid_max is not None and valid_min > valid_max:
        raise ValueError(f"valid_min: {valid_min} is greater than valid_max {valid_max}")


def effective_security_mode(policy: str, mode: str | None) -> str:
    """The OPC UA message security mode in force: None without a policy, else the configured
    mode, SignAndEncrypt by default."""
    return "None" if policy == "None" else mode or "SignAndEncrypt"
