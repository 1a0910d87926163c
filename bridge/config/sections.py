"""The small top-level sections: ``[bridge]``, ``[api]``, ``[storage]`` and the global
``[writeback]`` policy (whether and how often anything is written to a device)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from bridge.config.base import ConfigPath, StrictModel

__all__ = ["ApiConfig", "BridgeSection", "StorageSection", "WritebackPolicyConfig"]

_LOOPBACK = ("127.0.0.1", "::1", "localhost")


class ApiConfig(StrictModel):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    score_history: Annotated[int, Field(ge=1, le=1_000_000)] = 3600
    tokens_file: ConfigPath | None = None
    tokens_env: str | None = None
    allow_anonymous_remote: bool = False
    tls_cert: ConfigPath | None = None
    tls_key: ConfigPath | None = None
    cors_origins: list[str] = Field(default_factory=list)
    max_body_bytes: Annotated[int, Field(ge=1024, le=512 * 1024 * 1024)] = 1024 * 1024
    # Idle and slow clients (each holds a descriptor): connections at once, seconds to send a
    # whole request, head and body (after connecting or after the last response), seconds a
    # kept-alive connection may stay silent.
    max_connections: Annotated[int, Field(ge=1, le=1000)] = 64
    request_timeout: Annotated[float, Field(ge=0.5, le=300)] = 30.0
    keep_alive_timeout: Annotated[int, Field(ge=1, le=300)] = 5

    @model_validator(mode="after")
    def _check_security(self) -> ApiConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert: tls_cert and tls_key go together")
        has_tokens = self.tokens_file is not None or self.tokens_env is not None
        if self.enabled and self.host not in _LOOPBACK and not has_tokens \
                and not self.allow_anonymous_remote:
            raise ValueError(
                f"host: {self.host!r} is not loopback and no tokens_file/tokens_env is set; "
                "set allow_anonymous_remote = true to serve without authentication")
        return self


class StorageSection(StrictModel):
    data_dir: ConfigPath | None = None
    retention_days: Annotated[float, Field(gt=0, le=3650)] = 30.0
    flush_interval: Annotated[float, Field(gt=0, le=60)] = 1.0


class WritebackPolicyConfig(StrictModel):
    """``[writeback]``: whether and how often results are written to devices.

    The targets are each model's own (``[models.writeback]``, ``ModelWritebackConfig``)."""

    mode: Literal["off", "dry-run", "on"] = "off"
    min_interval: Annotated[float, Field(ge=0)] = 0.5


class BridgeSection(StrictModel):
    history_size: Annotated[int, Field(ge=1, le=100_000)] = 60
    log_level: Literal["debug", "info", "warning", "error"] = "info"
