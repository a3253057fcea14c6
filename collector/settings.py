"""Every CLI setting in one table: name, default, help.

Each becomes a ``--name`` option with the environment variable
``UPMETR_AUDIT_<NAME>``, and may also be set in the TOML file given by
``--config`` (keys are the names below). Precedence: command line, then
environment, then the config file, then the default.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from typing import Any

import click

ENV_PREFIX = "UPMETR_AUDIT_"


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    help: str
    type: Any = str
    is_flag: bool = False

    @property
    def envvar(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


SETTINGS: dict[str, Setting] = {s.name: s for s in (
    Setting("data_dir", "./var", "Where embedded data, keys and spools live."),
    Setting("clickhouse_url", None,
            "chdb:///path (embedded) or http(s)://user:pass@host:8123 (a server). "
            "Default: chdb://<data dir>/clickhouse."),
    Setting("otlp_http_addr", "127.0.0.1:4318", "OTLP/HTTP listen address (host:port)."),
    Setting("otlp_grpc_addr", "127.0.0.1:4317", "OTLP/gRPC listen address (host:port)."),
    Setting("web_addr", "127.0.0.1:8080", "Web page listen address (reserved for the web page)."),
    Setting("ingest_tokens", "", "Comma-separated bearer tokens the collector accepts."),
    Setting("insecure_no_auth", False, "Accept OTLP writes without a bearer token.", bool, True),
    Setting("max_body_bytes", 16 * 1024 * 1024,
            "Largest OTLP request body, after decompression.", int),
    Setting("queue_size_records", 200_000,
            "Records the sending queue holds before clients are told to retry.", int),
    Setting("summary_interval", 5.0, "Seconds between ingest summary lines (0: none).", float),
    Setting("log_level", "INFO", "Log level of the structured logs on stderr."),
    Setting("seal_interval", 300.0,
            "Seconds between serve's sealing runs (each followed by a check of the new seals).", float),
    # Failed-login spike alerts (collector/rules.py, detector.py, notify.py).
    Setting("alert_rules", None, "TOML file overriding the spike rules (see docs/alerts.md)."),
    Setting("detect_interval", 60.0, "Seconds between detector runs.", float),
    Setting("public_url", "http://localhost:8080",
            "Base URL of the audit page, for links in notifications."),
    Setting("alert_webhook_url", None, "POST alert notifications to this URL."),
    Setting("alert_webhook_secret", None, "HMAC-SHA256 key of the X-Upmetr-Signature header."),
    Setting("alert_webhook_format", "json", "Webhook body: json, or slack ({\"text\": ...}).",
            click.Choice(["json", "slack"])),
    Setting("smtp_host", None, "Also email alert notifications through this SMTP server."),
    Setting("smtp_port", 25, "SMTP port.", int),
    Setting("smtp_starttls", False, "Use STARTTLS (the server's certificate is verified).", bool, True),
    Setting("smtp_cafile", None, "CA file (PEM) to verify the SMTP server with, instead of the "
                                 "system's CA store."),
    Setting("smtp_user", None, "SMTP login (with the SMTP password)."),
    Setting("smtp_password", None, "SMTP password."),
    Setting("smtp_from", None, "Sender address of alert emails."),
    Setting("smtp_to", None, "Comma-separated recipients of alert emails."),
)}

#: The settings of the detector and its notifications (``serve`` and ``detect``).
ALERT_OPTIONS = ("alert_rules", "detect_interval", "public_url", "alert_webhook_url",
                 "alert_webhook_secret", "alert_webhook_format", "smtp_host", "smtp_port",
                 "smtp_starttls", "smtp_cafile", "smtp_user", "smtp_password", "smtp_from", "smtp_to")


def option(name: str):
    """The click option for setting ``name``."""
    s = SETTINGS[name]
    kwargs = dict(envvar=s.envvar, show_envvar=True, help=s.help)
    if s.is_flag:
        return click.option(s.flag, is_flag=True, default=s.default, **kwargs)
    return click.option(s.flag, type=s.type, default=s.default,
                        show_default=s.default is not None, **kwargs)


def options(*names: str):
    def decorate(f):
        for name in reversed(names):
            f = option(name)(f)
        return f
    return decorate


def load_config(path: str) -> dict[str, Any]:
    """Read a TOML config file of settings; unknown keys are an error."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise click.BadParameter(f"cannot read {path}: {exc.strerror}", param_hint="--config") from None
    except tomllib.TOMLDecodeError as exc:
        raise click.BadParameter(f"{path} is not valid TOML: {exc}", param_hint="--config") from None
    unknown = sorted(set(data) - set(SETTINGS))
    if unknown:
        raise click.BadParameter(
            f"{path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(SETTINGS)}",
            param_hint="--config")
    return data


def default_map_for(group: click.Group, values: dict[str, Any]) -> dict[str, Any]:
    """Click's nested default_map giving every command the config file's values."""
    out: dict[str, Any] = {}
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            out[name] = default_map_for(cmd, values)
        else:
            params = {p.name for p in cmd.params}
            out[name] = {k: v for k, v in values.items() if k in params}
    return out
