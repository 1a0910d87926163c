"""Pure OPC UA conversions: StatusCode -> quality, values, timestamps, connect errors.

No I/O here; ``adapters.opcua.client`` uses these and the tests pin them.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from asyncua import ua

from bridge.config import OpcuaTagConfig
from bridge.core.tags import Quality, Reading, Value, bad

__all__ = ["classify_connect_error", "quality_of", "reading_from", "status_name", "to_value"]

_AUTH_ERRORS = ("BadUserAccessDenied", "BadIdentityTokenInvalid", "BadIdentityTokenRejected")
_SECURITY_ERRORS = ("BadSecurityChecksFailed", "BadSecurityPolicyRejected", "BadCertificate",
                    "BadSecurityModeRejected", "BadNoValidCertificates")


def quality_of(status: ua.StatusCode | None) -> tuple[Quality, str]:
    """Good/Uncertain/Bad from the StatusCode's severity bits; reason = the status name."""
    code = int(status.value) if status is not None else 0
    name = ua.StatusCode(ua.UInt32(code & 0xFFFF0000)).name
    severity = code >> 30
    if severity == 0:
        return Quality.GOOD, ""
    if severity == 1:
        return Quality.UNCERTAIN, name
    return Quality.BAD, name


def to_value(value: Any) -> tuple[Value, str]:
    """A scalar for the TagStore: bool stays bool, numbers become float, text stays text.
    Anything else (arrays, structures) is refused with a reason."""
    if value is None or isinstance(value, bool | str):
        return value, ""
    if isinstance(value, int | float):
        return float(value), ""
    if isinstance(value, ua.LocalizedText):
        return value.Text, ""
    return None, f"unsupported value type {type(value).__name__}"


def _epoch(stamp: datetime | None) -> float | None:
    if stamp is None:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    epoch = stamp.timestamp()
    # OPC UA's "no timestamp" is 1601-01-01; asyncua may hand it over as is.
    return epoch if epoch > 0 else None


def reading_from(tag: OpcuaTagConfig, data: ua.DataValue | None, received: float) -> Reading:
    """One Reading from one DataValue, with range checks. Never raises."""
    if data is None:
        return bad(tag.name, "no value returned", received_time=received)
    quality, reason = quality_of(data.StatusCode)
    source = _epoch(data.SourceTimestamp)
    raw = data.Value.Value if data.Value is not None else None
    value, problem = to_value(raw)
    if problem and quality is not Quality.BAD:
        return bad(tag.name, problem, received_time=received)
    if quality is Quality.BAD:
        return Reading(tag.name, value, Quality.BAD, received, source, reason)
    if isinstance(value, float):
        if not math.isfinite(value):
            return Reading(tag.name, value, Quality.BAD, received, source, "not finite")
        if tag.valid_min is not None and value < tag.valid_min:
            return Reading(tag.name, value, Quality.BAD, received, source,
                           f"out of range: {value} < valid_min {tag.valid_min}")
        if tag.valid_max is not None and value > tag.valid_max:
            return Reading(tag.name, value, Quality.BAD, received, source,
                           f"out of range: {value} > valid_max {tag.valid_max}")
    return Reading(tag.name, value, quality, received, source, reason)


def status_name(exc: BaseException) -> str:
    if isinstance(exc, ua.UaStatusCodeError):
        return ua.StatusCode(exc.code).name
    return ""


def classify_connect_error(exc: BaseException, endpoint: str, policy: str, mode: str,
                           identity: str = "username and password") -> tuple[str, str]:
    """(kind, operator-facing detail) for an exception raised while opening a session;
    ``identity`` names what the operator should check when the user is refused."""
    name = status_name(exc)
    if name in _AUTH_ERRORS:
        return "authentication", f"{endpoint}: authentication failed ({name}): check {identity}"
    if name.startswith(_SECURITY_ERRORS):
        return "security", f"{endpoint}: security rejected ({name}) for {policy}/{mode}"
    if isinstance(exc, TimeoutError):
        return "timeout", f"{endpoint}: no answer (timeout)"
    if isinstance(exc, OSError):
        return "unreachable", f"{endpoint}: cannot connect ({exc.strerror or exc})"
    if name:
        return "protocol", f"{endpoint}: {name}"
    text = str(exc) or type(exc).__name__
    if "endpoint" in text.lower():
        return "security", f"{endpoint}: no endpoint offers {policy}/{mode} ({text})"
    return "protocol", f"{endpoint}: {text}"
