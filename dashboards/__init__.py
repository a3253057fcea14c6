"""Grafana for Upmetr Audit: dashboards and alert rules built as code.

Installed as ``upmetr_audit.grafana`` (from the ``dashboards/`` folder). The
builders (:mod:`.overview`, :mod:`.security`, :mod:`.explorer`,
:mod:`.alerting`) return plain dicts; :mod:`.tree` turns them into the
provisioning tree committed under ``dashboards/provisioning/`` and written by
``upmetr-audit grafana export``; :mod:`.provisioner` pushes the same objects
through Grafana's HTTP API (``upmetr-audit grafana provision``).
"""

#: The official ClickHouse data source plugin, and the uid every panel and rule uses.
PLUGIN_ID = "grafana-clickhouse-datasource"
DATASOURCE_UID = "upmetr-audit-clickhouse"
DATASOURCE_NAME = "Upmetr Audit ClickHouse"
#: Written on every query target: ≥ 4.0.0 keeps the plugin from migrating it as a v3 query.
PLUGIN_VERSION = "4.20.0"
#: Grafana's plugin.json requires this, and the dashboards are written for it.
MIN_GRAFANA = (11, 6)
SCHEMA_VERSION = 41

FOLDER_UID = "upmetr-audit"
FOLDER_TITLE = "Upmetr Audit"
TAG = "upmetr-audit"
