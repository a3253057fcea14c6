"""Small builders for classic (schemaVersion 41) dashboard JSON, as plain dicts.

Every query is raw SQL for the ClickHouse plugin (``editorType: "sql"``), with
``format`` and ``queryType`` kept consistent (0/"timeseries", 1/"table") and a
``pluginVersion`` ≥ 4 so the plugin never migrates it as a v3 query. Panels are
laid out left to right, top to bottom, on Grafana's 24-column grid.
"""

from __future__ import annotations

from . import DATASOURCE_UID, FOLDER_TITLE, PLUGIN_ID, PLUGIN_VERSION, SCHEMA_VERSION, TAG

DATASOURCE = {"type": PLUGIN_ID, "uid": DATASOURCE_UID}
TIMESERIES, TABLE = 0, 1
QUERY_TYPES = {TIMESERIES: "timeseries", TABLE: "table"}

#: The time filter for ``timestamp DateTime64(6)``: ``$__timeFilter`` would floor
#: both bounds to whole seconds and drop sub-second events at the end.
TIME_FILTER = "$__timeFilter_ms(timestamp)"


def org_filter(column: str = "org_id") -> str:
    """The ``org`` variable as a condition (``1=1`` when All is selected)."""
    return f"$__conditionalAll({column} IN (${{org:singlequote}}), $org)"


def target(sql: str, fmt: int = TABLE, ref_id: str = "A") -> dict:
    return {
        "refId": ref_id,
        "datasource": dict(DATASOURCE),
        "editorType": "sql",
        "format": fmt,
        "queryType": QUERY_TYPES[fmt],
        "pluginVersion": PLUGIN_VERSION,
        "rawSql": "\n".join(line.rstrip() for line in sql.strip().splitlines()),
    }


def _field_config(unit: str | None = None, thresholds: list | None = None,
                  custom: dict | None = None) -> dict:
    defaults: dict = {
        "color": {"mode": "thresholds" if thresholds else "palette-classic"},
        "thresholds": {"mode": "absolute",
                       "steps": thresholds or [{"color": "green", "value": None}]},
    }
    if unit:
        defaults["unit"] = unit
    if custom:
        defaults["custom"] = custom
    return {"defaults": defaults, "overrides": []}


def stat(title: str, sql: str, description: str, thresholds: list | None = None) -> dict:
    return {
        "type": "stat", "title": title, "description": description,
        "targets": [target(sql, TABLE)],
        "options": {
            # Set explicitly: an empty calcs list shows nothing on some versions.
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value", "graphMode": "none", "justifyMode": "auto",
            "orientation": "auto", "textMode": "auto", "wideLayout": True,
            "showPercentChange": False,
        },
        "fieldConfig": _field_config("short", thresholds),
        "_size": (6, 4),
    }


def timeseries(title: str, sql: str, description: str, stacked: bool = False, bars: bool = False,
               width: int = 12) -> dict:
    custom = {"drawStyle": "bars" if bars else "line", "lineWidth": 1, "fillOpacity": 60 if bars else 10,
              "stacking": {"mode": "normal" if stacked else "none", "group": "A"},
              "showPoints": "never", "spanNulls": False}
    return {
        "type": "timeseries", "title": title, "description": description,
        "targets": [target(sql, TIMESERIES)],
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
        "fieldConfig": _field_config("short", custom=custom),
        "_size": (width, 8),
    }


def table(title: str, sql: str, description: str, width: int = 12, height: int = 8) -> dict:
    return {
        "type": "table", "title": title, "description": description,
        "targets": [target(sql, TABLE)],
        "options": {"showHeader": True, "cellHeight": "sm",
                    "footer": {"show": False, "reducer": ["sum"], "fields": ""}},
        "fieldConfig": _field_config(custom={"align": "auto", "filterable": True}),
        "_size": (width, height),
    }


def bargauge(title: str, sql: str, description: str, width: int = 12) -> dict:
    return {
        "type": "bargauge", "title": title, "description": description,
        "targets": [target(sql, TABLE)],
        "options": {"orientation": "horizontal", "displayMode": "basic", "showUnfilled": True,
                    "valueMode": "color", "namePlacement": "left", "sizing": "auto",
                    "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": True}},
        "fieldConfig": _field_config("short"),
        "_size": (width, 8),
    }


def query_variable(name: str, label: str, sql: str, *, multi: bool = True, include_all: bool = True,
                   default: str | None = None) -> dict:
    """A variable filled by SQL (the string form the plugin has always accepted)."""
    if include_all:
        current = {"selected": True, "text": ["All"], "value": ["$__all"]}
    else:
        current = {"selected": True, "text": default or "", "value": default or ""}
    return {"type": "query", "name": name, "label": label, "datasource": dict(DATASOURCE),
            "query": sql, "definition": sql, "refresh": 1, "multi": multi, "includeAll": include_all,
            "sort": 1, "hide": 0, "current": current, "options": []}


def custom_variable(name: str, label: str, values: list[str]) -> dict:
    return {"type": "custom", "name": name, "label": label, "query": ",".join(values),
            "multi": True, "includeAll": True, "hide": 0,
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "options": [{"selected": True, "text": "All", "value": "$__all"}]
            + [{"selected": False, "text": v, "value": v} for v in values]}


def textbox_variable(name: str, label: str) -> dict:
    return {"type": "textbox", "name": name, "label": label, "query": "", "hide": 0,
            "current": {"selected": False, "text": "", "value": ""},
            "options": [{"selected": True, "text": "", "value": ""}]}


def _layout(panels: list[dict]) -> list[dict]:
    """Give panels ids and grid positions, filling rows of 24 columns."""
    out, x, y, row_h = [], 0, 0, 0
    for i, p in enumerate(panels, start=1):
        w, h = p.pop("_size")
        if x + w > 24:
            x, y, row_h = 0, y + row_h, 0
        out.append({"id": i, **p, "datasource": dict(DATASOURCE),
                    "gridPos": {"h": h, "w": w, "x": x, "y": y}})
        x, row_h = x + w, max(row_h, h)
    return out


def dashboard(uid: str, title: str, description: str, panels: list[dict], variables: list[dict],
              time_from: str = "now-24h") -> dict:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": [TAG],
        "timezone": "utc",
        "editable": False,
        "graphTooltip": 1,
        "time": {"from": time_from, "to": "now"},
        "refresh": "1m",
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "links": [{"title": FOLDER_TITLE, "type": "dashboards", "tags": [TAG], "asDropdown": True,
                   "icon": "external link", "tooltip": "", "targetBlank": False,
                   "includeVars": True, "keepTime": True}],
        "annotations": {"list": []},
        "templating": {"list": variables},
        "panels": _layout(panels),
    }


ORG_VARIABLE = query_variable(
    "org", "Org", "SELECT DISTINCT org_id FROM audit.audit_events ORDER BY org_id")
