"""Cross-field checks shared by several config sections (devices, sinks).

Each raises ValueError("key: message"); the config layer turns that into the key path.
"""

from __future__ import annotations

from bridge.core.datatypes import range_problem

__all__ = ["check_backoff", "check_credentials", "check_fail_safe", "check_span", "check_valid_range",
           "effective_security_mode"]


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


def check_valid_range(valid_min: float | None, valid_max: float | None, key: str = "valid_") -> None:
    """``{key}min`` not above ``{key}max`` (tags: valid_min/valid_max, targets: min/max)."""
    if valid_min is not None and valid_max is not None and valid_min > valid_max:
        raise ValueError(f"{key}min: {valid_min} is greater than {key}max {valid_max}")


def check_span(address: int, registers: int, name: str | None = None) -> None:
    """A value of several registers must end inside the 65,536-register address space: a
    float64 at 65535 would need registers 65535..65538. ``name``: the tag's, for the message."""
    if address + registers > 65536:
        what = f"tag {name!r} at " if name is not None else ""
        raise ValueError(f"address: {what}{address} + {registers} registers runs past 65535 "
                         f"(the last start for this type is {65536 - registers})")


def check_fail_safe(fail_safe: float | None, data_type: str | None, low: float | None,
                    high: float | None) -> None:
    """The fail-safe value must be one the write path accepts (``bridge.sinks.writeback``
    refuses anything else at run time, so the PLC would never get it): inside the target
    type's range, an integer for an integer type, inside the configured min..max."""
    if fail_safe is None:
        return
    problem = range_problem(data_type, fail_safe)
    if problem is not None:
        raise ValueError(f"fail_safe: {fail_safe:g} {problem}")
    if low is not None and fail_safe < low:
        raise ValueError(f"fail_safe: {fail_safe} is below min {low}")
    if high is not None and fail_safe > high:
        raise ValueError(f"fail_safe: {fail_safe} is above max {high}")


def effective_security_mode(policy: str, mode: str | None) -> str:
    """The OPC UA message security mode in force: None without a policy, else the configured
    mode, SignAndEncrypt by default."""
    return "None" if policy == "None" else mode or "SignAndEncrypt"
