"""Accounts of the audit page: organizations (timezone, modules) and users
(role, argon2 password hash), kept in ClickHouse next to the audit data."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass, replace

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from upmetr_audit.collector import schema

ROLES = ("superadmin", "admin", "viewer")
AUDIT_MODULE = "audit_logs"
_EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}$")
_hasher = PasswordHasher()
#: Verified against when the user does not exist, so that timing does not tell.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


class AccountError(ValueError):
    """Invalid account data or an unknown account."""


@dataclass(frozen=True)
class User:
    email: str
    org_id: str
    role: str
    password_hash: str
    disabled: bool
    #: Sessions issued at or before this instant (seconds since the epoch) are
    #: refused: signing out and a new password end every session of the user.
    sessions_valid_after: float = 0.0


@dataclass(frozen=True)
class Org:
    org_id: str
    timezone: str
    modules: tuple[str, ...]


def _version() -> int:
    return time.time_ns()


_USER_SELECT = ("SELECT email, org_id, role, password_hash, disabled, "
                f"toUnixTimestamp64Micro(sessions_valid_after) FROM {schema.USERS_TABLE} FINAL ")


def _user(row) -> User:
    *fields, valid_after_us = row
    return User(*fields, sessions_valid_after=valid_after_us / 1_000_000)


def get_user(client, email: str) -> User | None:
    rows = client.query(_USER_SELECT + "WHERE email = {email:String}",
                        parameters={"email": email.strip().lower()}).result_rows
    return _user(rows[0]) if rows else None


def list_users(client, org_id: str | None = None) -> list[User]:
    rows = client.query(
        _USER_SELECT + "WHERE {org:String} = '' OR org_id = {org:String} ORDER BY org_id, email",
        parameters={"org": org_id or ""}).result_rows
    return [_user(r) for r in rows]


def _write_user(client, user: User) -> None:
    valid_after = dt.datetime.fromtimestamp(user.sessions_valid_after, dt.UTC)
    client.insert(schema.USERS_TABLE, [[user.email, user.org_id, user.role, user.password_hash,
                                        user.disabled, valid_after, _version()]],
                  column_names=["email", "org_id", "role", "password_hash", "disabled",
                                "sessions_valid_after", "version"])


def create_user(client, email: str, org_id: str, role: str, password: str | None = None) -> str:
    """Create a user; returns the password (generated when none is given)."""
    email = email.strip().lower()
    if not _EMAIL_RE.match(email):
        raise AccountError(f"invalid email {email!r}")
    if role not in ROLES:
        raise AccountError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    if not org_id or len(org_id) > 256:
        raise AccountError("org is required (at most 256 characters)")
    if get_user(client, email):
        raise AccountError(f"user {email} already exists")
    password = password or secrets.token_urlsafe(12)
    _check_password(password)
    _write_user(client, User(email, org_id, role, _hasher.hash(password), False))
    if get_org(client, org_id) is None:
        save_org(client, Org(org_id, "UTC", ()))
    return password


def _check_password(password: str) -> None:
    if len(password) < 10:
        raise AccountError("a password needs at least 10 characters")


def set_password(client, email: str, password: str) -> None:
    """A new password; it also ends every session of the user (see :func:`end_sessions`)."""
    user = get_user(client, email)
    if user is None:
        raise AccountError(f"no user {email}")
    _check_password(password)
    _write_user(client, replace(user, password_hash=_hasher.hash(password),
                                sessions_valid_after=time.time()))


def end_sessions(client, email: str) -> None:
    """End every session of the user signed in until now, on every device
    (sign-out does it); the next sign-in starts a new one."""
    user = get_user(client, email)
    if user is None:
        raise AccountError(f"no user {email}")
    _write_user(client, replace(user, sessions_valid_after=time.time()))


def set_disabled(client, email: str, disabled: bool = True) -> None:
    """Disable (or enable again) an account. Disabling also ends every session
    signed in until now: enabling the account later does not revive them."""
    user = get_user(client, email)
    if user is None:
        raise AccountError(f"no user {email}")
    ended = time.time() if disabled else user.sessions_valid_after
    _write_user(client, replace(user, disabled=disabled, sessions_valid_after=ended))
    if disabled:
        revoke_tokens(client, user.email)


def authenticate(client, email: str, password: str) -> User | None:
    """The user if the password is right and the account enabled. Takes the
    same argon2 time whether or not the user exists."""
    user = get_user(client, email) if email else None
    try:
        _hasher.verify(user.password_hash if user else _DUMMY_HASH, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return None
    if user is None or user.disabled:
        return None
    return user


def has_superadmin(client) -> bool:
    return any(u.role == "superadmin" and not u.disabled for u in list_users(client))


# -- orgs ---------------------------------------------------------------------


def get_org(client, org_id: str) -> Org | None:
    rows = client.query(
        f"SELECT org_id, timezone, modules FROM {schema.ORGS_TABLE} FINAL "
        "WHERE org_id = {org:String}", parameters={"org": org_id}).result_rows
    return Org(rows[0][0], rows[0][1], tuple(rows[0][2])) if rows else None


def save_org(client, org: Org) -> None:
    client.insert(schema.ORGS_TABLE, [[org.org_id, org.timezone, list(org.modules), _version()]],
                  column_names=["org_id", "timezone", "modules", "version"])


def set_module(client, org_id: str, module: str, on: bool) -> Org:
    org = get_org(client, org_id) or Org(org_id, "UTC", ())
    modules = set(org.modules) | {module} if on else set(org.modules) - {module}
    org = Org(org.org_id, org.timezone, tuple(sorted(modules)))
    save_org(client, org)
    return org


def set_timezone(client, org_id: str, tz: str) -> Org:
    import zoneinfo  # noqa: PLC0415
    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise AccountError(f"unknown time zone {tz!r}") from None
    org = get_org(client, org_id) or Org(org_id, "UTC", ())
    org = Org(org.org_id, tz, org.modules)
    save_org(client, org)
    return org


# -- personal API tokens ---------------------------------------------------------

TOKEN_PREFIX = "uat_"


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(client, email: str) -> str:
    """A new API token for a superadmin; only its SHA-256 is stored."""
    user = get_user(client, email)
    if user is None or user.disabled:
        raise AccountError(f"no active user {email}")
    if user.role != "superadmin":
        raise AccountError("API tokens are for superadmins (only they can read audit logs)")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    client.insert(schema.TOKENS_TABLE, [[_token_hash(token), user.email, dt.datetime.now(dt.UTC),
                                         False, _version()]],
                  column_names=["token_sha256", "email", "created_at", "revoked", "version"])
    return token


def revoke_tokens(client, email: str) -> int:
    """Revoke every API token of ``email`` (disabling the user does it too);
    returns how many were in use."""
    live = client.query(
        f"SELECT toString(token_sha256), created_at FROM {schema.TOKENS_TABLE} FINAL "
        "WHERE email = {e:String} AND NOT revoked", parameters={"e": email}).result_rows
    if live:
        version = _version()
        client.insert(schema.TOKENS_TABLE, [[h, email, created, True, version] for h, created in live],
                      column_names=["token_sha256", "email", "created_at", "revoked", "version"])
    return len(live)


def user_for_token(client, token: str) -> User | None:
    """The active user owning ``token``, or None. The lookup is by SHA-256, so
    the stored value never meets the presented one in a comparison that leaks
    timing; the final check is constant-time too."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 128:
        return None
    digest = _token_hash(token)
    rows = client.query(
        f"SELECT toString(token_sha256), email FROM {schema.TOKENS_TABLE} FINAL "
        "WHERE token_sha256 = {h:FixedString(64)} AND NOT revoked",
        parameters={"h": digest}).result_rows
    if not rows or not hmac.compare_digest(str(rows[0][0]), digest):
        return None
    user = get_user(client, rows[0][1])
    return user if user and not user.disabled else None
