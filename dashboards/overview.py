"""Audit overview: the page's four cards, then activity over the time range."""

from __future__ import annotations

from .panels import (
    ORG_VARIABLE,
    TIME_FILTER,
    bargauge,
    dashboard,
    org_filter,
    query_variable,
    stat,
    timeseries,
)

UID = "upmetr-audit-overview"
EVENTS = "audit.audit_events"

#: The 24h cards count (to − 24h, to], "to" being the end of the dashboard's range
#: (now, by default), like the page's (now − 24h, now].
LAST_24H = "timestamp > $__toTime_ms - INTERVAL 24 HOUR AND timestamp <= $__toTime_ms"
LOGIN = "action = 'auth.login'"

TZ_VARIABLE = query_variable(
    "tz", "Time zone (today)", "SELECT time_zone FROM system.time_zones ORDER BY time_zone",
    multi=False, include_all=False, default="UTC")


def build() -> dict:
    org = org_filter()
    cards = [
        stat("Total events", f"SELECT count() AS total_events FROM {EVENTS} WHERE {org}",
             "Every stored event of the selected orgs, whatever the time range (the page's Total Events)."),
        stat("Events today", f"""
SELECT count() AS events_today FROM {EVENTS}
WHERE {org}
  AND timestamp >= $__toTime_ms - INTERVAL 2 DAY AND timestamp < $__toTime_ms + INTERVAL 2 DAY
  AND toDate(timestamp, ${{tz:singlequote}}) = toDate($__toTime_ms, ${{tz:singlequote}})""",
             "Events on the calendar day of the range's end, in the time zone chosen above "
             "(set it to the org's time zone to match the page's Events Today)."),
        stat("Logins (24h)", f"""
SELECT count() AS logins_24h FROM {EVENTS}
WHERE {org} AND {LOGIN} AND status = 'success' AND {LAST_24H}""",
             "Successful auth.login events in the 24 hours up to the range's end."),
        stat("Failed logins (24h)", f"""
SELECT count() AS failed_logins_24h FROM {EVENTS}
WHERE {org} AND {LOGIN} AND status = 'failure' AND {LAST_24H}""",
             "Failed auth.login events in the 24 hours up to the range's end."),
        timeseries("Events over time by category", f"""
SELECT $__timeInterval_ms(timestamp) AS time, category, count() AS events
FROM {EVENTS}
WHERE {TIME_FILTER} AND {org}
GROUP BY time, category
ORDER BY time, category""", "Events per interval, one series per category.", stacked=True, bars=True),
        bargauge("Top actions", f"""
SELECT action, count() AS events
FROM {EVENTS}
WHERE {TIME_FILTER} AND {org}
GROUP BY action
ORDER BY events DESC, action
LIMIT 15""", "The 15 most frequent actions in the time range."),
        timeseries("Failures over time", f"""
SELECT $__timeInterval_ms(timestamp) AS time, action, count() AS failures
FROM {EVENTS}
WHERE {TIME_FILTER} AND {org} AND status = 'failure'
GROUP BY time, action
ORDER BY time, action""", "Events with status failure per interval, one series per action.",
                   stacked=True, bars=True),
        bargauge("Events by service", f"""
SELECT if(service_name = '', '(unknown)', service_name) AS service, count() AS events
FROM {EVENTS}
WHERE {TIME_FILTER} AND {org}
GROUP BY service
ORDER BY events DESC, service
LIMIT 20""", "Events per emitting service (resource service.name)."),
    ]
    return dashboard(UID, "Audit overview",
                     "Upmetr Audit: the audit page's cards and activity across orgs.",
                     cards, [ORG_VARIABLE, TZ_VARIABLE])
