"""The benchmarks' one deterministic audit workload.

:func:`generate` yields the events of a data set as Arrow tables (one per
chunk of at most :data:`CHUNK` rows), with the values ``audit.audit_events``
stores. The same ``(events, seed, end_us)`` always gives the same rows: each
chunk draws from its own NumPy generator seeded with ``(seed, chunk index)``.
Every benchmark uses it: the bulk loads (the product's table, the stock
``otel_logs`` table, PostgreSQL) read its Parquet files (:func:`write_parquet`),
the ingest and serve load generators turn its rows into OTLP requests
(:func:`otlp_requests`), the shipper drives emits from :func:`emit_args`.

The shape:

* ``N_ORGS`` orgs with Zipf weights (exponent ``ZIPF_S``): ``org-000`` gets
  ~24% of the events; an org has ``max(3, 1500 × weight)`` users;
* IP pools: an org's office addresses (``198.18.<org>.x``, a few per 20
  users) for 85% of a user's events, the user's own home address
  (``100.64/10``) otherwise;
* actions drawn by category (:data:`CATEGORY_WEIGHTS`), then by action inside
  it (:data:`ACTION_WEIGHTS`, others 1), over every catalog action;
  1.5% of logins fail ("invalid password"), 1% of other actions that can fail;
* bursts: ``BURST_SHARE`` of the events fall in ``N_BURSTS`` five-minute
  windows of one org and one outside address (``203.0.113.x``): credential
  stuffing (failed logins, 70%) or API floods; overall ~2% of logins fail;
* one year of timestamps up to ``end_us``: uniform days, 75% of the
  events around 14:00 UTC (normal, sd 3.5 h), the rest uniform in the day;
* UUIDv7 event ids (the shipper's kind: time-ordered), from the timestamp;
* events of the ``upmetr-api`` service carry trace and span ids (a traced
  service), the others none; sessions per user and day; resources where
  the catalog needs them; ``changes`` on updates; ``details`` with the HTTP
  method and route.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from upmetr_audit.shipper import contract as c
from upmetr_audit.shipper.catalog import ACTIONS, CATEGORIES

CHUNK = 1_000_000
N_ORGS = 50
ZIPF_S = 1.1
YEAR_US = 365 * 86_400 * 1_000_000
DAY_US = 86_400 * 1_000_000
N_BURSTS = 120
BURST_SHARE = 0.003
BURST_US = 300 * 1_000_000
LOGIN_FAILURE = 0.015
OTHER_FAILURE = 0.01
#: Relative weight of each category (of the events outside bursts).
CATEGORY_WEIGHTS = {
    "auth": 40, "system": 18, "mfa": 8, "monitor": 8, "incident": 8, "alert_rule": 4,
    "compute": 4, "cloud_account": 3, "status_page": 2, "agent": 2, "team": 1.5,
    "magic_link": 1.5, "settings": 1,
}
#: Relative weight of an action inside its category (unlisted: 1).
ACTION_WEIGHTS = {
    "auth.login": 70, "auth.logout": 28, "auth.password_change": 2,
    "mfa.verify": 40, "system.api_access": 97, "system.rate_limit": 3,
    "monitor.update": 12, "monitor.create": 5, "incident.acknowledge": 9, "incident.resolve": 9,
    "alert_rule.update": 6, "compute.instance_reboot": 4, "cloud_account.discover_resources": 6,
    "status_page.update": 6, "agent.update": 4, "team.user_update": 3, "magic_link.send": 2,
    "settings.update": 8,
}
USER_AGENTS = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/18.1 Mobile/15E148 Safari/604.1",
    "upmetr-cli/2.4.1 python-requests/2.32.3",
    "terraform-provider-upmetr/1.8.0 (+https://www.terraform.io) Terraform/1.9.8",
)
SERVICES = ("upmetr-web", "upmetr-api", "upmetr-worker")
_SERVICE_OF_CATEGORY = {"auth": 0, "mfa": 0, "magic_link": 0, "team": 0, "settings": 0,
                        "system": 1, "monitor": 1, "alert_rule": 1, "status_page": 1, "agent": 1,
                        "incident": 1, "compute": 2, "cloud_account": 2}
TRACED_SERVICE = 1

#: The columns of a generated table, in ``audit.audit_events`` order, except
#: that ``details`` is JSON text (``details_json``).
COLUMNS = ("event_id", "org_id", "timestamp", "received_at", "category", "action", "status",
           "user_email", "user_id", "resource_type", "resource_id", "ip", "user_agent", "session_id",
           "actor_type", "service_name", "reason", "changes", "details_json", "trace_id", "span_id")

_ACTION_IDS = tuple(ACTIONS)
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def org_weights() -> np.ndarray:
    w = 1.0 / np.arange(1, N_ORGS + 1) ** ZIPF_S
    return w / w.sum()


def users_per_org() -> np.ndarray:
    return np.maximum(3, (1500 * org_weights()).astype(np.int64))


def action_probabilities() -> np.ndarray:
    """Probability of each action of the catalog (order of ``ACTIONS``), outside bursts."""
    total = sum(CATEGORY_WEIGHTS.values())
    p = np.zeros(len(_ACTION_IDS))
    for cat in CATEGORIES:
        weights = [ACTION_WEIGHTS.get(a.id, 1) for a in cat.actions]
        for a, w in zip(cat.actions, weights, strict=True):
            p[_ACTION_IDS.index(a.id)] = CATEGORY_WEIGHTS[cat.id] / total * w / sum(weights)
    return p / p.sum()


def _hex(raw: np.ndarray) -> np.ndarray:
    """(n, k) uint8 -> (n, 2k) uint8 ASCII lowercase hex."""
    out = np.empty((raw.shape[0], raw.shape[1] * 2), dtype=np.uint8)
    out[:, 0::2] = _HEX[raw >> 4]
    out[:, 1::2] = _HEX[raw & 15]
    return out


def _strings(ascii_rows: np.ndarray) -> pa.Array:
    """(n, k) uint8 ASCII -> Arrow string array of n k-character strings."""
    n, k = ascii_rows.shape
    offsets = pa.py_buffer((np.arange(n + 1, dtype=np.int32) * k).tobytes())
    return pa.StringArray.from_buffers(n, offsets, pa.py_buffer(np.ascontiguousarray(ascii_rows).tobytes()))


def _join(*parts) -> pa.Array:
    return pc.binary_join_element_wise(*parts, "")


def _num(values: np.ndarray) -> pa.Array:
    return pc.cast(pa.array(values), pa.string())


def _take(choices, index: np.ndarray) -> pa.Array:
    return pa.array(list(choices), pa.string()).take(pa.array(index))


def uuid7(ts_us: np.ndarray, rng: np.random.Generator) -> pa.Array:
    """UUIDv7 text: 48-bit Unix milliseconds, version 7, 74 random bits."""
    n = len(ts_us)
    raw = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    ms = (ts_us // 1000).astype(">u8").view(np.uint8).reshape(n, 8)[:, 2:]
    raw[:, :6] = ms
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x70
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    h = _hex(raw)
    text = np.empty((n, 36), dtype=np.uint8)
    text[:, [8, 13, 18, 23]] = ord("-")
    text[:, 0:8], text[:, 9:13], text[:, 14:18] = h[:, 0:8], h[:, 8:12], h[:, 12:16]
    text[:, 19:23], text[:, 24:36] = h[:, 16:20], h[:, 20:32]
    return _strings(text)


def _timestamps(n: int, end_us: int, rng: np.random.Generator) -> np.ndarray:
    day = rng.integers(0, 365, size=n)
    peak = rng.random(n) < 0.75
    sec = np.where(peak, np.mod(rng.normal(14 * 3600, 3.5 * 3600, size=n), 86_400),
                   rng.random(n) * 86_400)
    start = end_us - YEAR_US
    ts = start + day * DAY_US + (sec * 1_000_000).astype(np.int64)
    return np.minimum(ts, end_us - 1)


def _chunk(index: int, n: int, seed: int, end_us: int) -> pa.Table:
    rng = np.random.default_rng([seed, index])
    n_users = users_per_org()
    org = rng.choice(N_ORGS, size=n, p=org_weights())
    user = (rng.random(n) ** 1.5 * n_users[org]).astype(np.int64)  # some users are busier
    action = rng.choice(len(_ACTION_IDS), size=n, p=action_probabilities())
    ts = _timestamps(n, end_us, rng)
    fail_p = np.where(action == _ACTION_IDS.index("auth.login"), LOGIN_FAILURE, OTHER_FAILURE)
    can_fail = np.array([ACTIONS[a].can_fail for a in _ACTION_IDS])[action]
    failed = can_fail & (rng.random(n) < fail_p)
    pool = 2 + n_users[org] // 20
    office = (rng.random(n) < 0.85)
    ip_a = np.where(office, 198, 100)
    ip_b = np.where(office, 18 + org // 256, 64 + org // 4)
    ip_c = np.where(office, org % 256, (org % 4) * 64 + user // 256)
    ip_d = np.where(office, 1 + (user * 7 + rng.integers(0, 3, size=n)) % pool, user % 256)

    # bursts: a share of the rows become credential-stuffing or API-flood events
    brng = np.random.default_rng([seed, 1_000_000])  # the bursts are the data set's, not the chunk's
    burst_org = brng.choice(N_ORGS, size=N_BURSTS, p=org_weights())
    burst_at = end_us - (brng.random(N_BURSTS) * (YEAR_US - BURST_US)).astype(np.int64)
    burst_stuffing = brng.random(N_BURSTS) < 0.7
    in_burst = rng.random(n) < BURST_SHARE
    b = rng.integers(0, N_BURSTS, size=n)
    org = np.where(in_burst, burst_org[b], org)
    user = np.where(in_burst, (rng.random(n) * n_users[burst_org[b]]).astype(np.int64), user)
    ts = np.where(in_burst, np.minimum(burst_at[b] + (rng.random(n) * BURST_US).astype(np.int64),
                                       end_us - 1), ts)
    stuffing = in_burst & burst_stuffing[b]
    flood = in_burst & ~burst_stuffing[b]
    action = np.where(stuffing, _ACTION_IDS.index("auth.login"), action)
    action = np.where(flood, np.where(rng.random(n) < 0.8, _ACTION_IDS.index("system.api_access"),
                                      _ACTION_IDS.index("system.rate_limit")), action)
    failed = np.where(stuffing, True, np.where(flood, action == _ACTION_IDS.index("system.rate_limit"),
                                               failed))
    ip_a, ip_b = np.where(in_burst, 203, ip_a), np.where(in_burst, 0, ip_b)
    ip_c, ip_d = np.where(in_burst, 113, ip_c), np.where(in_burst, b % 254 + 1, ip_d)

    order = np.argsort(ts, kind="stable")  # time order, as a collector receives them
    org, user, action, ts, failed = org[order], user[order], action[order], ts[order], failed[order]
    ip_a, ip_b, ip_c, ip_d = ip_a[order], ip_b[order], ip_c[order], ip_d[order]

    action_ids = _take(_ACTION_IDS, action)
    category_of = [a.split(".")[0] for a in _ACTION_IDS]
    categories = _take(category_of, action)
    rtypes = [ACTIONS[a].resource_type or "" for a in _ACTION_IDS]
    resource_type = _take(rtypes, action)
    has_resource = np.array([bool(r) for r in rtypes])[action]
    resource_no = 1 + (rng.random(n) ** 2 * (20 + n_users[org])).astype(np.int64)
    resource_id = pc.if_else(pa.array(has_resource), _join(resource_type, "-", _num(resource_no)), "")
    org_ids = _join("org-", pc.utf8_lpad(_num(org), 3, "0"))
    status = pc.if_else(pa.array(failed), "failure", "success")
    login = action == _ACTION_IDS.index("auth.login")
    reason = pc.if_else(pa.array(failed), _take(("provider error", "invalid password"),
                                                login.astype(np.int64)), "")
    is_update = np.array([a.endswith("update") for a in _ACTION_IDS])[action]
    changes = pc.if_else(pa.array(is_update), _join(
        '{"name": {"before": "n', _num(rng.integers(0, 100, n)), '", "after": "n',
        _num(rng.integers(0, 100, n)), '"}}'), "")
    service = np.array([_SERVICE_OF_CATEGORY[cat] for cat in category_of])[action]
    traced = service == TRACED_SERVICE
    trace_raw = _hex(rng.integers(0, 256, size=(n, 16), dtype=np.uint8))
    span_raw = _hex(rng.integers(0, 256, size=(n, 8), dtype=np.uint8))
    trace_id = pc.if_else(pa.array(traced), _strings(trace_raw), "")
    span_id = pc.if_else(pa.array(traced), _strings(span_raw), "")
    day = (ts // DAY_US).astype(np.uint64)
    sess = (org.astype(np.uint64) * np.uint64(1_000_003) + user.astype(np.uint64)) * np.uint64(
        0x9E3779B97F4A7C15) ^ (day * np.uint64(0xBF58476D1CE4E5B9)) ^ np.uint64(seed)
    session_id = _join("s-", _strings(_hex(sess.astype(">u8").view(np.uint8).reshape(n, 8))))
    methods = ("POST" if cat in ("auth", "mfa", "magic_link") else
               "GET" if a == "system.api_access" else "DELETE" if a.endswith("delete") else "PUT"
               for a, cat in zip(_ACTION_IDS, category_of, strict=True))
    details = _take([json.dumps({"http.method": m, "http.route": "/api/" + a.replace(".", "/")})
                     for m, a in zip(methods, _ACTION_IDS, strict=True)], action)
    ip = _join(_num(ip_a), ".", _num(ip_b), ".", _num(ip_c), ".", _num(ip_d))
    received = ts + 20_000 + rng.integers(0, 900_000, size=n)
    return pa.table({
        "event_id": uuid7(ts, rng),
        "org_id": org_ids,
        "timestamp": pa.array(ts, pa.timestamp("us", tz="UTC")),
        "received_at": pa.array(received, pa.timestamp("us", tz="UTC")),
        "category": categories,
        "action": action_ids,
        "status": status,
        "user_email": _join("user", _num(user), "@", org_ids, ".example.com"),
        "user_id": _join("u-", _num(org), "-", _num(user)),
        "resource_type": resource_type,
        "resource_id": resource_id,
        "ip": ip,
        "user_agent": _take(USER_AGENTS, (org * 31 + user * 17) % len(USER_AGENTS)),
        "session_id": session_id,
        "actor_type": pc.if_else(pa.array(action == _ACTION_IDS.index("system.api_access")),
                                 "api_token", "user"),
        "service_name": _take(SERVICES, service),
        "reason": reason,
        "changes": changes,
        "details_json": details,
        "trace_id": trace_id,
        "span_id": span_id,
    })


def generate(events: int, seed: int, end_us: int, chunk: int = CHUNK) -> Iterator[pa.Table]:
    """The data set, in chunks of at most ``chunk`` rows (each sorted by time)."""
    for i, start in enumerate(range(0, events, chunk)):
        yield _chunk(i, min(chunk, events - start), seed, end_us)


def write_parquet(events: int, seed: int, end_us: int, folder: str) -> list[str]:
    """Write the data set as Parquet files into ``folder``; their paths."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i, table in enumerate(generate(events, seed, end_us)):
        path = os.path.join(folder, f"events-{i:04d}.parquet")
        pq.write_table(table, path, compression="zstd")
        paths.append(path)
    return paths


def event_attributes(row: dict) -> dict[str, str]:
    """The OTLP log attributes of one generated row (a ``to_pylist`` dict),
    as a producer sends them: the contract attributes, empty ones left out,
    plus the ``details``."""
    attrs = {k: row[col] for k, col in c.ATTRIBUTES.items() if col != "ip" and row[col]}
    attrs[c.CLIENT_ADDRESS] = row["ip"]
    attrs.update(json.loads(row["details_json"]))
    return attrs
