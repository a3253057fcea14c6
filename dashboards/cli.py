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
@click.option("--out", "grafana_out", required=True, type=click.Path(file_okay=False),
              envvar="UPMETR_AUDIT_GRAFANA_OUT", show_envvar=True,
              help="Directory to write the provisioning tree into (mount it as /etc/grafana/provisioning).")
@_rules_option
@_fail_cleanly
def export(grafana_out, alert_rules):
    """Write the provisioning tree: data source, dashboards, alert rules, contact point, policy."""
    files = tree.build(rules_mod.load(alert_rules))
    try:
        tree.write(grafana_out, files)
    except OSError as exc:
        raise click.ClickException(f"cannot write to {grafana_out}: {exc.strerror}") from None
    click.echo(f"wrote {len(files)} files to {grafana_out}")


def _ch(flag: str, key: str, **kwargs):
    """An option whose parameter name gives its env var (UPMETR_AUDIT_<NAME>), the one the
    provisioning files read too."""
    env = tree.ENV[key]
    return click.option(flag, env.removeprefix("UPMETR_AUDIT_").lower(), envvar=env, show_envvar=True,
                        **kwargs)


@grafana.command()
@click.option("--url", "grafana_url", required=True, envvar="UPMETR_AUDIT_GRAFANA_URL", show_envvar=True,
              help="Grafana's base URL.")
@click.option("--token", "grafana_token", required=True, envvar="UPMETR_AUDIT_GRAFANA_TOKEN",
              show_envvar=True, help="A service account token with the Admin role.")
@click.option("--dry-run", "grafana_dry_run", is_flag=True, envvar="UPMETR_AUDIT_GRAFANA_DRY_RUN",
              show_envvar=True, help="Read Grafana and print the plan; change nothing.")
@_ch("--clickhouse-host", "host", default="clickhouse", show_default=True,
     help="ClickHouse host as Grafana reaches it.")
@_ch("--clickhouse-protocol", "protocol", type=click.Choice(sorted(_PROTOCOLS)), default="native",
     show_default=True)
@_ch("--clickhouse-port", "port", type=click.IntRange(1, 65535), default=None,
     help="Default: 9000 (native) or 8123 (http).")
@_ch("--clickhouse-user", "username", default="upmetr_grafana", show_default=True,
     help="The read-only user of `upmetr-audit db grants`.")
@_ch("--clickhouse-database", "defaultDatabase", default="audit", show_default=True)
@_ch("--clickhouse-password", "password", default="", help="Its password.")
@_ch("--webhook-url", "webhook", required=True, help="Where Grafana posts alert notifications.")
@_rules_option
@_fail_cleanly
def provision(grafana_url, grafana_token, grafana_dry_run, grafana_ch_host, grafana_ch_protocol,
              grafana_ch_port, grafana_ch_user, grafana_ch_database, db_password_grafana,
              grafana_webhook_url, alert_rules):
    """Create or update everything through Grafana's API; a second run changes nothing."""
    from . import provisioner

    ruleset = rules_mod.load(alert_rules)
    api = provisioner.connect(grafana_url, grafana_token)
    values = {"host": grafana_ch_host, "protocol": grafana_ch_protocol,
              "port": grafana_ch_port or _PROTOCOLS[grafana_ch_protocol], "username": grafana_ch_user,
              "defaultDatabase": grafana_ch_database, "password": db_password_grafana}
    plan = provisioner.Provisioner(api, grafana_url, datasource_values=values,
                                   webhook_url=grafana_webhook_url, ruleset=ruleset)
    plan = plan.run(dry_run=grafana_dry_run)
    for step in plan.steps:
        click.echo(str(step))
    verb = "would change" if grafana_dry_run else "changed"
    click.echo(f"{verb} {plan.changed} of {len(plan.steps)} resources")
