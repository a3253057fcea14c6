"""``upmetr-audit grafana export`` and ``upmetr-audit grafana provision``."""

from __future__ import annotations

import functools

import click

from upmetr_audit.collector import rules as rules_mod
from upmetr_audit.collector.errors import UpmetrAuditError

from . import tree

_PROTOCOLS = {"native": 9000, "http": 8123}


def _fail_cleanly(f):
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        try:
            return f(*args, **kwargs)
        except UpmetrAuditError as exc:
            raise click.ClickException(str(exc)) from None
        except ImportError as exc:
            raise click.ClickException(
                f"this command needs the grafana extra ({exc.name} is missing): "
                f"pip install 'upmetr-audit[grafana]'") from None
    return wrapper


_rules_option = click.option(
    "--alert-rules", type=click.Path(dir_okay=False), default=None, envvar="UPMETR_AUDIT_ALERT_RULES",
    show_envvar=True, help="TOML file of rule overrides (as for the detector); default: the built-in rules.")


@click.group()
def grafana():
    """Grafana dashboards and alert rules for the audit data."""


@grafana.command()
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory to write the provisioning tree into (mount it as /etc/grafana/provisioning).")
@_rules_option
@_fail_cleanly
def export(out_dir, alert_rules):
    """Write the provisioning tree: data source, dashboards, alert rules, contact point, policy."""
    files = tree.build(rules_mod.load(alert_rules))
    try:
        tree.write(out_dir, files)
    except OSError as exc:
        raise click.ClickException(f"cannot write to {out_dir}: {exc.strerror}") from None
    click.echo(f"wrote {len(files)} files to {out_dir}")


def _env(key: str) -> str:
    return tree.ENV[key]


@grafana.command()
@click.option("--url", required=True, envvar="GRAFANA_URL", show_envvar=True, help="Grafana's base URL.")
@click.option("--token", required=True, envvar="GRAFANA_TOKEN", show_envvar=True,
              help="A service account token with the Admin role.")
@click.option("--dry-run", is_flag=True, help="Read Grafana and print the plan; change nothing.")
@click.option("--clickhouse-host", default="clickhouse", show_default=True, envvar=_env("host"),
              show_envvar=True, help="ClickHouse host as Grafana reaches it.")
@click.option("--clickhouse-protocol", type=click.Choice(sorted(_PROTOCOLS)), default="native",
              show_default=True, envvar=_env("protocol"), show_envvar=True)
@click.option("--clickhouse-port", type=click.IntRange(1, 65535), default=None, envvar=_env("port"),
              show_envvar=True, help="Default: 9000 (native) or 8123 (http).")
@click.option("--clickhouse-user", default="upmetr_grafana", show_default=True, envvar=_env("username"),
              show_envvar=True, help="The read-only user of `upmetr-audit db grants`.")
@click.option("--clickhouse-database", default="audit", show_default=True, envvar=_env("defaultDatabase"),
              show_envvar=True)
@click.option("--clickhouse-password", default="", envvar=_env("password"), show_envvar=True,
              help="Its password.")
@click.option("--webhook-url", required=True, envvar=_env("webhook"), show_envvar=True,
              help="Where Grafana posts alert notifications.")
@_rules_option
@_fail_cleanly
def provision(url, token, dry_run, clickhouse_host, clickhouse_protocol, clickhouse_port, clickhouse_user,
              clickhouse_database, clickhouse_password, webhook_url, alert_rules):
    """Create or update everything through Grafana's API; a second run changes nothing."""
    from . import provisioner

    ruleset = rules_mod.load(alert_rules)
    api = provisioner.connect(url, token)
    values = {"host": clickhouse_host, "protocol": clickhouse_protocol,
              "port": clickhouse_port or _PROTOCOLS[clickhouse_protocol], "username": clickhouse_user,
              "defaultDatabase": clickhouse_database, "password": clickhouse_password}
    plan = provisioner.Provisioner(api, url, datasource_values=values, webhook_url=webhook_url,
                                   ruleset=ruleset).run(dry_run=dry_run)
    for step in plan.steps:
        click.echo(str(step))
    verb = "would change" if dry_run else "changed"
    click.echo(f"{verb} {plan.changed} of {len(plan.steps)} resources")
