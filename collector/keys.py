"""Ed25519 signing keys of the seals, and the keyring of their public keys.

Files in the keys folder (default ``<data dir>/keys``):

* ``signing.key``: the active private key, PKCS#8 PEM, mode 0600;
* ``keyring.json``: every public key ever active, with the time it was
  created and retired, so that seals signed before a rotation still verify.

A key id is the first 16 hex digits of SHA-256 over the raw public key. A
retired key verifies only seals of windows that ended before it was retired
(journald's CVE-2023-31439: an old key must not vouch for newer entries).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass

from .errors import UpmetrAuditError

PRIVATE_FILE = "signing.key"
KEYRING_FILE = "keyring.json"
KEYRING_FORMAT = "upmetr-audit-keyring/1"


class KeyFileError(UpmetrAuditError):
    """A key file is missing, malformed or unusable."""


def keys_dir_for(data_dir: str) -> str:
    return os.path.join(data_dir, "keys")


def key_id_of(raw_public: bytes) -> str:
    return hashlib.sha256(raw_public).hexdigest()[:16]


@dataclass(frozen=True)
class PublicKey:
    key_id: str
    raw: bytes
    created_at_us: int
    retired_at_us: int | None = None

    def to_json(self) -> dict:
        return {"key_id": self.key_id, "public_key": base64.b64encode(self.raw).decode(),
                "created_at_us": self.created_at_us, "retired_at_us": self.retired_at_us}


class Keyring:
    """Public keys by id, and the active private key when it is loaded."""

    def __init__(self, keys: dict[str, PublicKey], active: str | None, private=None):
        self.keys, self.active, self._private = keys, active, private
        self._verifiers: dict = {}

    @property
    def can_sign(self) -> bool:
        return self._private is not None

    def sign(self, domain: bytes, digest: bytes) -> tuple[str, str]:
        """``(key id, base64 signature)`` over ``domain || digest``; never with a retired key."""
        if self._private is None:
            raise KeyFileError("no private signing key loaded; run `upmetr-audit keys generate`")
        if self.keys[self.active].retired_at_us is not None:
            raise KeyFileError(f"the signing key {self.active} is retired; refusing to sign with it")
        return self.active, base64.b64encode(self._private.sign(domain + digest)).decode()

    def check(self, key_id: str, domain: bytes, digest: bytes, signature: str,
              signed_through_us: int | None = None) -> str | None:
        """``None`` if the signature is good, else what is wrong with it.

        ``signed_through_us``: the end of what was signed (a window end); a
        retired key must have been retired after it.
        """
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        key = self.keys.get(key_id)
        if key is None:
            return f"signed by unknown key {key_id!r}"
        if (signed_through_us is not None and key.retired_at_us is not None
                and signed_through_us > key.retired_at_us):
            return f"signed by key {key_id} after it was retired"
        try:
            sig = base64.b64decode(signature, validate=True)
            verifier = self._verifiers.get(key_id)
            if verifier is None:
                verifier = self._verifiers[key_id] = Ed25519PublicKey.from_public_bytes(key.raw)
            verifier.verify(sig, domain + digest)
        except (InvalidSignature, ValueError):
            return f"signature does not verify with key {key_id}"
        return None

    def public_json(self) -> str:
        return json.dumps({"format": KEYRING_FORMAT, "active": self.active,
                           "keys": [k.to_json() for k in self.keys.values()]}, indent=2) + "\n"


def _parse_keyring(text: str, source: str) -> Keyring:
    try:
        data = json.loads(text)
        if data.get("format") != KEYRING_FORMAT:
            raise ValueError(f"format is not {KEYRING_FORMAT}")
        keys = {}
        for k in data["keys"]:
            raw = base64.b64decode(k["public_key"], validate=True)
            if len(raw) != 32 or key_id_of(raw) != k["key_id"]:
                raise ValueError(f"key {k.get('key_id')!r} does not match its id")
            keys[k["key_id"]] = PublicKey(k["key_id"], raw, int(k["created_at_us"]),
                                          None if k["retired_at_us"] is None else int(k["retired_at_us"]))
        active = data.get("active")
        if active is not None and active not in keys:
            raise ValueError("the active key is not in the keyring")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise KeyFileError(f"{source} is not a valid keyring: {exc}") from None
    return Keyring(keys, active)


def load_public(path: str) -> Keyring:
    """Public keys from an exported keyring (JSON) or one PEM public key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise KeyFileError(f"cannot read public key file {path}: {exc.strerror}") from None
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(data)
        except ValueError:
            raise KeyFileError(f"{path} is not a PEM public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFileError(f"{path} is not an Ed25519 public key")
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        kid = key_id_of(raw)
        return Keyring({kid: PublicKey(kid, raw, 0)}, kid)
    try:
        return _parse_keyring(data.decode(), path)
    except UnicodeDecodeError:
        raise KeyFileError(f"{path} is neither a keyring (JSON) nor a PEM public key") from None


def load(keys_dir: str, private: bool = True) -> Keyring:
    """The keyring of ``keys_dir``, with the active private key if ``private``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    ring_path = os.path.join(keys_dir, KEYRING_FILE)
    if not os.path.exists(ring_path):
        raise _no_keyring(keys_dir)
    ring = load_public(ring_path)
    if not private:
        return ring
    priv_path = os.path.join(keys_dir, PRIVATE_FILE)
    try:
        with open(priv_path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
    except OSError as exc:
        raise KeyFileError(f"cannot read the signing key {priv_path}: {exc.strerror}") from None
    except ValueError:
        raise KeyFileError(f"{priv_path} is not a PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{priv_path} is not an Ed25519 key")
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if key_id_of(raw) != ring.active:
        raise KeyFileError(f"{priv_path} is not the keyring's active key {ring.active}")
    ring._private = key
    return ring


def _write_atomic(path: str, data: bytes, mode: int) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _new_private():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return pem, raw


def _install(keys_dir: str, ring: Keyring, pem: bytes) -> None:
    os.makedirs(keys_dir, mode=0o700, exist_ok=True)
    _write_atomic(os.path.join(keys_dir, PRIVATE_FILE), pem, 0o600)
    _write_atomic(os.path.join(keys_dir, KEYRING_FILE), ring.public_json().encode(), 0o644)
    dfd = os.open(keys_dir, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _key_files(keys_dir: str) -> list[str]:
    """The files of ``keys_dir`` (left-over temporary files aside); none if it does not exist."""
    try:
        return sorted(n for n in os.listdir(keys_dir) if ".tmp-" not in n)
    except FileNotFoundError:
        return []


def _no_keyring(keys_dir: str) -> KeyFileError:
    """The error for a keys folder without a keyring: what to do about it."""
    found = _key_files(keys_dir)
    if found:
        return KeyFileError(
            f"{keys_dir} holds {', '.join(found)} but no {KEYRING_FILE}; refusing to make a new key "
            f"over it: restore {KEYRING_FILE} (e.g. from `keys export-public`) or move the files away")
    return KeyFileError(f"no signing keys in {keys_dir}; run `upmetr-audit keys generate`")


def generate(keys_dir: str, now_us: int) -> str:
    """Create the first signing key; refuses if a keyring or any key file exists
    (a private key is never overwritten). Returns its id."""
    if os.path.exists(os.path.join(keys_dir, KEYRING_FILE)):
        raise KeyFileError(f"{keys_dir} already holds a keyring; use `upmetr-audit keys rotate`")
    if _key_files(keys_dir):
        raise _no_keyring(keys_dir)
    pem, raw = _new_private()
    kid = key_id_of(raw)
    _install(keys_dir, Keyring({kid: PublicKey(kid, raw, now_us)}, kid), pem)
    return kid


def rotate(keys_dir: str, now_us: int) -> tuple[str, str]:
    """Retire the active key (its private half is deleted) and make a new one.
    Returns ``(old id, new id)``."""
    ring = load(keys_dir, private=False)
    old = ring.keys[ring.active]
    pem, raw = _new_private()
    kid = key_id_of(raw)
    keys = dict(ring.keys)
    keys[old.key_id] = PublicKey(old.key_id, old.raw, old.created_at_us, now_us)
    keys[kid] = PublicKey(kid, raw, now_us)
    _install(keys_dir, Keyring(keys, kid), pem)
    return old.key_id, kid


def load_or_generate(keys_dir: str, now_us: int) -> Keyring:
    """For ``serve``: the keyring with its private key, created on first use
    (only in a missing or empty keys folder; see :func:`generate`)."""
    if not os.path.exists(os.path.join(keys_dir, KEYRING_FILE)):
        generate(keys_dir, now_us)
    return load(keys_dir)


class KeyringFile:
    """The keyring of a keys folder with its private key, loaded again whenever
    ``keyring.json`` changes: a long-running sealer signs with the key that is
    active now, never with one that `keys rotate` retired meanwhile."""

    def __init__(self, keys_dir: str):
        self.keys_dir = keys_dir
        self._text: bytes | None = None
        self._ring: Keyring | None = None

    def current(self) -> Keyring:
        try:
            with open(os.path.join(self.keys_dir, KEYRING_FILE), "rb") as f:
                text = f.read()
        except FileNotFoundError:
            raise _no_keyring(self.keys_dir) from None
        if text != self._text:
            self._ring, self._text = load(self.keys_dir), text
        return self._ring
