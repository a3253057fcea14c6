"""Leaf hashes and Merkle trees of sealed windows (docs/integrity.md).

One leaf per stored event: SHA-256 over a versioned, canonical serialization
of its stored fields. The personal fields enter only through a salted
commitment, so that erasing a person (zeroing the salt, pseudonymizing the
values) leaves the leaf, and so every seal, verifiable.

Three leaf versions; sealing writes :data:`LEAF_VERSION`, verify and proofs
accept all (a seal names its ``leaf_version``). Versions 1 and 2 use the
text personal commitment (``ns`` is a netstring: ``<byte length>:<UTF-8
bytes>,``)::

    commitment = SHA-256("upmetr-audit/personal/v1" 0x00 || salt (16 bytes)
                          || ns(user_email) ns(user_id) ns(ip) ns(user_agent)
                          ns(changes) ns(details))

Version 3 uses the binary one (``lp`` as below; the IP as its 16 bytes;
``details`` entries sorted by key, then value, bytewise)::

    commitment = SHA-256("upmetr-audit/personal/v2" 0x00 || salt (16 bytes)
                          || lp(user_email) lp(user_id) ip (16 bytes) lp(user_agent)
                          lp(changes) || lp(key) lp(value) of every details entry)

Version 1, text (kept so that older seals still verify)::

    leaf       = SHA-256("upmetr-audit/leaf/v1" 0x00
                          || ns(event_id) ns(org_id) ns(timestamp_us) ...
                          || commitment (32 bytes))

Version 2, binary (no decimal or hex rendering; ``lp`` is the UTF-8 byte
length as 4 bytes little-endian, then the bytes; ``i64`` is 8 bytes
little-endian, two's complement)::

    leaf       = SHA-256("upmetr-audit/leaf/v2" 0x00 || event_id (16 bytes, RFC 4122 order)
                          || lp(org_id) i64(timestamp_us) i64(received_at_us)
                          || lp(category) lp(action) lp(status) ... lp(span_id)
                          || commitment (32 bytes))

Version 3: version 2 with the domain "upmetr-audit/leaf/v3" and the binary
commitment (about a fifth less work in ClickHouse than the text one; P4 in
docs/benchmarks.md).

In the text commitment, ``ip`` is the 16 bytes of the stored IPv6 as 32 lowercase
hex digits; timestamps are integer microseconds since the epoch; ``details``
is ``ns(key) ns(value)`` of every entry, keys in byte order. ClickHouse
computes every leaf in SQL (below); Python computes the same for proofs.

The tree: leaves in the order ``(received_at, event_id text)`` (version 1)
or in byte order of the leaves (versions 2 and 3); a parent is
SHA-256(0x01 || left || right); an unpaired last node moves up unchanged. An
empty window's root is SHA-256("upmetr-audit/empty-window/v1").
"""

from __future__ import annotations

import hashlib
import uuid

#: The version sealing writes; :data:`LEAF_VERSIONS` are the ones verify accepts.
LEAF_VERSION = 3
LEAF_VERSIONS = (1, 2, 3)
LEAF_DOMAINS = {v: f"upmetr-audit/leaf/v{v}".encode() + b"\x00" for v in LEAF_VERSIONS}
#: Leaf versions whose personal commitment is the binary one (the rest: text).
BINARY_COMMITMENT = frozenset({3})
PERSONAL_DOMAINS = {False: b"upmetr-audit/personal/v1\x00", True: b"upmetr-audit/personal/v2\x00"}
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"upmetr-audit/empty-window/v1").hexdigest()
ZERO_SALT = bytes(16)

#: Fields hashed in clear, in order: (name, SQL rendering of the stored column).
PUBLIC_FIELDS: tuple[tuple[str, str], ...] = (
    ("event_id", "toString(event_id)"),
    ("org_id", "toString(org_id)"),
    ("timestamp_us", "toString(toUnixTimestamp64Micro(timestamp))"),
    ("received_at_us", "toString(toUnixTimestamp64Micro(received_at))"),
    ("category", "toString(category)"),
    ("action", "toString(action)"),
    ("status", "toString(status)"),
    ("resource_type", "toString(resource_type)"),
    ("resource_id", "resource_id"),
    ("session_id", "session_id"),
    ("actor_type", "toString(actor_type)"),
    ("service_name", "toString(service_name)"),
    ("reason", "reason"),
    ("trace_id", "trace_id"),
    ("span_id", "span_id"),
)


def _ns_sql(expr: str) -> str:
    return f"concat(toString(length({expr})), ':', {expr}, ',')"


def _lp_sql(expr: str) -> str:
    return f"reinterpret(toUInt32(length({expr})), 'FixedString(4)'), {expr}"


def _i64_sql(expr: str) -> str:
    return f"reinterpret(toInt64({expr}), 'FixedString(8)')"


#: Version 2: the public fields in binary, in the order of PUBLIC_FIELDS.
_PUBLIC_V2_SQL: tuple[str, ...] = (
    "UUIDToNum(event_id)",
    _lp_sql("org_id"),
    _i64_sql("toUnixTimestamp64Micro(timestamp)"),
    _i64_sql("toUnixTimestamp64Micro(received_at)"),
    *(_lp_sql(sql) for _, sql in PUBLIC_FIELDS[4:]),
)


_DETAILS_SQL = ("arrayStringConcat(arrayMap((k, v) -> concat(" + _ns_sql("k") + ", " + _ns_sql("v")
                + "), mapKeys(mapSort(details)), mapValues(mapSort(details))))")

#: Fields hashed only inside the salted commitment, in order.
PERSONAL_FIELDS: tuple[tuple[str, str], ...] = (
    ("user_email", "user_email"),
    ("user_id", "user_id"),
    ("ip", "lower(hex(ip))"),
    ("user_agent", "user_agent"),
    ("changes", "changes"),
    ("details", _DETAILS_SQL),
)

#: The fields erasure pseudonymizes: the personal ones.
PERSONAL_COLUMNS: tuple[str, ...] = tuple(name for name, _ in PERSONAL_FIELDS)


#: The binary commitment's fields, in the order of PERSONAL_FIELDS.
_PERSONAL_BINARY_SQL: tuple[str, ...] = (
    _lp_sql("user_email"),
    _lp_sql("user_id"),
    "reinterpret(ip, 'FixedString(16)')",
    _lp_sql("user_agent"),
    _lp_sql("changes"),
    # arrayZip + arraySort orders (key, value) bytewise, and costs less than mapSort
    "arrayStringConcat(arrayMap(kv -> concat(" + _lp_sql("kv.1") + ", " + _lp_sql("kv.2")
    + "), arraySort(arrayZip(mapKeys(details), mapValues(details)))))",
)


def commitment_sql(salt: str = "pii_salt", version: int = LEAF_VERSION) -> str:
    """SQL: the 32-byte personal commitment a leaf of ``version`` holds, from
    a row's salt and values."""
    _check_version(version)
    if version in BINARY_COMMITMENT:
        parts = ", ".join(_PERSONAL_BINARY_SQL)
        return f"SHA256(concat('upmetr-audit/personal/v2', '\\0', {salt}, {parts}))"
    parts = ", ".join(_ns_sql(sql) for _, sql in PERSONAL_FIELDS)
    return f"SHA256(concat('upmetr-audit/personal/v1', '\\0', {salt}, {parts}))"


def _check_version(version: int) -> None:
    if version not in LEAF_VERSIONS or type(version) is not int:
        raise ValueError(f"unsupported leaf version {version!r}")


def leaf_sql(commitment: str, version: int = LEAF_VERSION) -> str:
    """SQL: the 32-byte leaf of a row, given the SQL of its commitment."""
    _check_version(version)
    parts = ", ".join(_ns_sql(sql) for _, sql in PUBLIC_FIELDS) if version == 1 else ", ".join(_PUBLIC_V2_SQL)
    return f"SHA256(concat('upmetr-audit/leaf/v{version}', '\\0', {parts}, {commitment}))"


def sorted_leaves_sql(version: int = LEAF_VERSION) -> str:
    """SQL aggregate: the leaves of a group (column ``leaf``) in the tree's order."""
    _check_version(version)
    if version == 1:
        return ("arrayMap(x -> x.3, arraySort(groupArray("
                "(toUnixTimestamp64Micro(received_at), toString(event_id), leaf))))")
    return "arraySort(groupArray(leaf))"


def effective_commitment_sql(erased: str = "erased_commitment", version: int = LEAF_VERSION) -> str:
    """SQL: the commitment (for leaves of ``version``) of a live row, or, when
    its salt was shredded, the one recorded at erasure (``erased``: a 32-byte
    String; '' when none)."""
    return (f"if(pii_salt = toFixedString(repeat('\\0', 16), 16), {erased}, "
            f"{commitment_sql(version=version)})")


def merkle_root_sql(leaves: str) -> str:
    """SQL: the hex Merkle root of an array of 32-byte leaves (EMPTY_ROOT if empty)."""
    levels = f"toUInt32(ceil(log2(greatest(length({leaves}), 1))))"
    fold = (f"arrayFold((acc, _) -> arrayMap(i -> if(2 * i <= length(acc), "
            f"SHA256(concat(unhex('01'), acc[2 * i - 1], acc[2 * i])), acc[2 * i - 1]), "
            f"range(1, intDiv(length(acc) + 1, 2) + 1)), range({levels}), {leaves})")
    return f"if(empty({leaves}), '{EMPTY_ROOT}', lower(hex({fold}[1])))"


# -- the same in Python (proofs, naming modified events) ----------------------


def ns(value: str) -> bytes:
    data = value.encode()
    return str(len(data)).encode() + b":" + data + b","


def details_text(details: dict[str, str]) -> str:
    """The canonical rendering of ``details`` (as :data:`_DETAILS_SQL`)."""
    items = sorted(details.items(), key=lambda kv: kv[0].encode())
    return b"".join(ns(k) + ns(v) for k, v in items).decode()


def commitment(salt: bytes, personal: dict[str, object], version: int = LEAF_VERSION) -> bytes:
    """The personal commitment a leaf of ``version`` holds; ``personal`` holds
    the PERSONAL_FIELDS, with ``details`` as a dict and ``ip`` as 32 hex digits."""
    _check_version(version)
    if len(salt) != 16:
        raise ValueError("the salt must be 16 bytes")
    binary = version in BINARY_COMMITMENT
    data = [PERSONAL_DOMAINS[binary], salt]
    for name, _ in PERSONAL_FIELDS:
        value = personal[name]
        if not binary:
            data.append(ns(details_text(value) if name == "details" else str(value)))
        elif name == "ip":
            ip = bytes.fromhex(str(value))
            if len(ip) != 16:
                raise ValueError("the ip must be 16 bytes (32 hex digits)")
            data.append(ip)
        elif name == "details":
            items = sorted(((str(k), str(v)) for k, v in dict(value).items()),
                           key=lambda kv: (kv[0].encode(), kv[1].encode()))
            data += [lp(k) + lp(v) for k, v in items]
        else:
            data.append(lp(str(value)))
    return hashlib.sha256(b"".join(data)).digest()


def lp(value: str) -> bytes:
    data = value.encode()
    return len(data).to_bytes(4, "little") + data


def _i64(value: object) -> bytes:
    return int(value).to_bytes(8, "little", signed=True)


def leaf(public: dict[str, str], personal_commitment: bytes, version: int = LEAF_VERSION) -> bytes:
    """The leaf of an event; ``public`` holds the PUBLIC_FIELDS as rendered by
    their SQL (event id as UUID text, timestamps as decimal microseconds)."""
    _check_version(version)
    if len(personal_commitment) != 32:
        raise ValueError("the personal commitment must be 32 bytes")
    if version == 1:
        data = [ns(str(public[name])) for name, _ in PUBLIC_FIELDS]
    else:
        data = [uuid.UUID(str(public["event_id"])).bytes, lp(str(public["org_id"])),
                _i64(public["timestamp_us"]), _i64(public["received_at_us"]),
                *(lp(str(public[name])) for name, _ in PUBLIC_FIELDS[4:])]
    return hashlib.sha256(b"".join([LEAF_DOMAINS[version], *data, personal_commitment])).digest()


def ordered(rows: list[tuple[int, str, bytes]], version: int = LEAF_VERSION) -> list[tuple[int, str, bytes]]:
    """``(received_at_us, event_id text, leaf)`` rows in the tree's order."""
    _check_version(version)
    if version == 1:
        return sorted(rows)
    return sorted(rows, key=lambda r: (r[2], r[1]))


def _parent(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def merkle_root(leaves: list[bytes]) -> str:
    if not leaves:
        return EMPTY_ROOT
    level = list(leaves)
    while len(level) > 1:
        nxt = [_parent(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0].hex()


def merkle_path(leaves: list[bytes], index: int) -> list[dict[str, str]]:
    """The inclusion path of ``leaves[index]``: siblings from the bottom up, each
    ``{"left": hex}`` or ``{"right": hex}`` (the side the sibling is on)."""
    if not 0 <= index < len(leaves):
        raise ValueError("leaf index out of range")
    path, level, i = [], list(leaves), index
    while len(level) > 1:
        if i % 2 == 1:
            path.append({"left": level[i - 1].hex()})
        elif i + 1 < len(level):
            path.append({"right": level[i + 1].hex()})
        nxt = [_parent(level[j], level[j + 1]) for j in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level, i = nxt, i // 2
    return path


def root_from_path(leaf_hash: bytes, path: list[dict[str, str]]) -> str:
    """The root that ``leaf_hash`` and its inclusion path lead to."""
    node = leaf_hash
    for step in path:
        if set(step) == {"left"}:
            node = _parent(bytes.fromhex(step["left"]), node)
        elif set(step) == {"right"}:
            node = _parent(node, bytes.fromhex(step["right"]))
        else:
            raise ValueError(f"malformed path step {step!r}")
    return node.hex()
