"""The ECS Fargate stack is wired to what tegami expects: services, settings, metrics, runbook.

Read with cfn-lint's decoder like the App Runner stack, and checked against the code: the
settings tegami reads, the metrics it emits as EMF (app/ops/emf.py), the commands it has, the
health route, and the runbook in deploy/README.md.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from cfnlint.decode import decode

from app.cli import build_parser
from app.config import Settings
from app.ops.emf import EMITTED
from app.ops.health import router as health_router
from tests.deploy import test_cloudformation as app_runner_stack

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "deploy" / "cloudformation" / "tegami-ecs.yaml"
RUNBOOK = ROOT / "deploy" / "README.md"
NAMESPACE = {"Fn::Sub": "tegami/${AWS::StackName}"}
ALERTS = app_runner_stack.ALERTS

# Settings the stack leaves at tegami's default, each with why. A new setting fails
# test_every_setting_is_set_by_the_stack_or_left_at_its_default until it is decided here
# or given to the tasks.
LEFT_AT_DEFAULT = {
    "ses_list_retry_seconds": "a minute, doubling to an hour, suits an SES outage",
    "console": "on: support staff sign in with their own support or admin key",
    "console_session_minutes": "a working day (8 h), then sign in again",
    "mail_backend": "ses is the default; mailbox is for a developer's machine",
    "mailbox_dir": "only the mailbox backend writes there",
    "send_lease_seconds": "60 s outlasts a slow SES call; nothing in ECS changes that",
    "dns_nameserver": "the VPC's resolver answers the DNS checks",
    "sns_cert_dir": "tasks fetch SNS's signing certificate over HTTPS (NAT)",
    "sns_max_age_seconds": "SNS retries for about an hour; the default matches",
    "reputation_guard": "on, as SES's review levels call for",
    "reputation_window": "the default window is what the alarms' thresholds assume",
    "reputation_min_sends": "as above",
    "webhook_timeout_seconds": "the app's receiver decides; 10 s suits a Next.js route",
    "webhook_concurrency": "8 posts in flight per worker task suit one receiver",
    "webhook_first_retry_seconds": "the Standard Webhooks schedule",
    "timezone": "PRO WORKS's users are in Japan (Asia/Tokyo), QuietHours is read in it",
}


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    decoded, problems = decode(str(TEMPLATE))
    assert not problems, problems
    assert decoded is not None
    return dict(decoded)


def resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return app_runner_stack.resources(template, kind)


def ref(name: str) -> dict[str, str]:
    return {"Ref": name}


def container(template: dict[str, Any], task_definition: str) -> dict[str, Any]:
    props = template["Resources"][task_definition]["Properties"]
    (found,) = props["ContainerDefinitions"]
    return dict(found)


def unless(item: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """An environment or secret entry, and the condition it is given under (if any)."""
    if "Fn::If" in item:
        condition, given, absent = item["Fn::If"]
        assert absent == ref("AWS::NoValue")
        return condition, given
    return None, item


def environment(template: dict[str, Any], task_definition: str) -> dict[str, Any]:
    return {
        entry["Name"]: (condition, entry["Value"])
        for condition, entry in map(unless, container(template, task_definition)["Environment"])
    }


def secrets(template: dict[str, Any], task_definition: str) -> dict[str, Any]:
    return {
        entry["Name"]: (condition, entry["ValueFrom"])
        for condition, entry in map(unless, container(template, task_definition).get("Secrets", []))
    }


def service_task(template: dict[str, Any], service: str) -> str:
    reference = template["Resources"][service]["Properties"]["TaskDefinition"]
    return str(reference["Ref"])


FULL_TASKS = ("ApiTaskDefinition", "WorkerTaskDefinition", "CommandTaskDefinition")


def test_the_api_and_the_worker_are_separate_services_of_one_image(
    template: dict[str, Any],
) -> None:
    services = resources(template, "AWS::ECS::Service")
    assert set(services) == {"ApiService", "WorkerService"}
    api_env = environment(template, service_task(template, "ApiService"))
    worker_env = environment(template, service_task(template, "WorkerService"))
    assert api_env["TEGAMI_RUN_WORKER"] == (None, "false")
    # The worker service runs tegami's worker (unset would mean true as well).
    assert worker_env.get("TEGAMI_RUN_WORKER", (None, "true")) == (None, "true")
    assert container(template, "WorkerTaskDefinition")["Command"] == ["tegami", "worker"]
    assert container(template, "ApiTaskDefinition")["Command"][:2] == ["tegami", "serve"]
    for name in resources(template, "AWS::ECS::TaskDefinition"):
        image = container(template, name)["Image"]
        if name == "MigrateTaskDefinition":  # the next release's image, before it serves
            assert image == {"Fn::If": ["HasNextImage", ref("NextImageUri"), ref("ImageUri")]}
        else:
            assert image == ref("ImageUri"), name
        task = template["Resources"][name]["Properties"]
        assert task["RequiresCompatibilities"] == ["FARGATE"]
        assert task["TaskRoleArn"] == {"Fn::GetAtt": ["ServiceRole", "Arn"]}
        assert container(template, name)["LogConfiguration"]["LogDriver"] == "awslogs"
    # Only the API is behind the load balancer; a failed release rolls itself back.
    assert "LoadBalancers" in services["ApiService"]
    assert "LoadBalancers" not in services["WorkerService"]
    for service in services.values():
        breaker = service["DeploymentConfiguration"]["DeploymentCircuitBreaker"]
        assert breaker == {"Enable": True, "Rollback": True}


def test_the_load_balancer_answers_https_and_checks_readyz(template: dict[str, Any]) -> None:
    (group,) = resources(template, "AWS::ElasticLoadBalancingV2::TargetGroup").values()
    assert group["HealthCheckPath"] == "/readyz"
    assert "/readyz" in {getattr(route, "path", None) for route in health_router.routes}
    assert group["Port"] == 8000 and group["TargetType"] == "ip"
    listeners = {
        props["Protocol"]: props
        for props in resources(template, "AWS::ElasticLoadBalancingV2::Listener").values()
    }
    https = listeners["HTTPS"]
    assert https["Certificates"] == [{"CertificateArn": ref("CertificateArn")}]
    assert https["DefaultActions"] == [{"Type": "forward", "TargetGroupArn": ref("ApiTargetGroup")}]
    (redirect,) = listeners["HTTP"]["DefaultActions"]
    assert redirect["Type"] == "redirect" and redirect["RedirectConfig"]["Protocol"] == "HTTPS"
    (balancer,) = template["Resources"]["ApiService"]["Properties"]["LoadBalancers"]
    assert balancer["TargetGroupArn"] == ref("ApiTargetGroup")
    assert balancer["ContainerPort"] == 8000
    api = container(template, "ApiTaskDefinition")
    assert api["PortMappings"] == [{"ContainerPort": 8000, "Protocol": "tcp"}]


def test_webhook_settings_reach_every_task_that_records_or_posts_events(
    template: dict[str, Any],
) -> None:
    for task in FULL_TASKS:
        assert environment(template, task)["TEGAMI_WEBHOOK_URL"] == (
            "HasWebhook",
            ref("WebhookUrl"),
        )
        assert secrets(template, task)["TEGAMI_WEBHOOK_SECRET"] == (
            "HasWebhook",
            ref("WebhookSecretArn"),
        )
    # tegami refuses a URL without a secret: the stack gives both or neither.
    condition = template["Conditions"]["HasWebhook"]["Fn::And"]
    assert {"Fn::Not": [{"Fn::Equals": [ref("WebhookUrl"), ""]}]} in condition
    assert {"Fn::Not": [{"Fn::Equals": [ref("WebhookSecretArn"), ""]}]} in condition
    rule = template["Rules"]["WebhookNeedsItsSecret"]
    assert rule["RuleCondition"] == {"Fn::Not": [{"Fn::Equals": [ref("WebhookUrl"), ""]}]}


def test_every_secret_is_a_secret_the_tasks_may_read(template: dict[str, Any]) -> None:
    role = template["Resources"]["ExecutionRole"]["Properties"]
    (policy,) = role["Policies"]
    (statement,) = policy["PolicyDocument"]["Statement"]
    assert statement["Action"] == "secretsmanager:GetSecretValue"
    readable = statement["Resource"]
    for task in resources(template, "AWS::ECS::TaskDefinition"):
        for condition, arn in secrets(template, task).values():
            wanted = arn if condition is None else {"Fn::If": [condition, arn, ref("AWS::NoValue")]}
            assert wanted in readable, (task, arn)
    for task in FULL_TASKS:
        given = secrets(template, task)
        for name in (
            "TEGAMI_DATABASE_URL",
            "TEGAMI_UNSUBSCRIBE_SECRET",
            "TEGAMI_ADDRESS_HASH_SECRET",
            "TEGAMI_METRICS_TOKEN",
        ):
            assert given[name][0] is None, (task, name)  # always, never a plain value
        assert given["TEGAMI_METRICS_TOKEN"] == (None, ref("MetricsTokenSecret"))
        assert given["TEGAMI_ALERT_WEBHOOK_URL"] == (
            "HasAlertWebhook",
            ref("AlertWebhookSecretArn"),
        )


def test_every_setting_is_set_by_the_stack_or_left_at_its_default(
    template: dict[str, Any],
) -> None:
    settings = {f"TEGAMI_{name.upper()}" for name in Settings.model_fields}
    left = {f"TEGAMI_{name.upper()}" for name in LEFT_AT_DEFAULT}
    assert left <= settings, left - settings  # no reason kept for a setting that is gone
    given_by_task = {}
    for task in FULL_TASKS:
        env, hidden = environment(template, task), secrets(template, task)
        assert not set(env) & set(hidden), task  # nothing set twice
        given = set(env) | set(hidden)
        assert given - settings == {"AWS_REGION"}, task
        assert not given & left, (task, given & left)
        missing = settings - given - left
        assert not missing, f"{task}: set these in the stack or add them to LEFT_AT_DEFAULT"
        given_by_task[task] = {**env, **hidden}
    # The one-off commands run with the services' settings, not a drifting copy.
    api, worker, command = (given_by_task[task] for task in FULL_TASKS)
    differ = {name for name in api if api[name] != worker[name] or api[name] != command[name]}
    assert differ == {"TEGAMI_RUN_WORKER"}
    assert api["TEGAMI_DOCS"] == (None, ref("Docs"))
    assert template["Parameters"]["Docs"]["Default"] == "false"
    assert api["TEGAMI_CLOUDWATCH_EMF"] == (None, "true")
    assert api["TEGAMI_CLOUDWATCH_EMF_NAMESPACE"] == (None, NAMESPACE)


def test_the_stacks_defaults_make_settings_tegami_accepts(
    template: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every environment value, resolved with the parameters' defaults (and examples for
    the required ones), is read by tegami's own Settings without an error."""
    examples = {
        "Domain": "proworks.jp",
        "FromAddress": "PRO WORKS <noreply@proworks.jp>",
        "SenderPostalAddress": "〒100-0001 東京都千代田区千代田1-1",
        "SenderContact": "support@proworks.jp",
        "LinkHosts": "proworks.jp,www.proworks.jp",
        "PublicBaseUrl": "https://tegami.proworks.jp",
        "WebhookUrl": "https://app.proworks.jp/api/tegami",
        "MaxSendRate": "14",
        "QuietHours": "22:00-08:00",
    }
    values = {
        name: str(parameter.get("Default", ""))
        for name, parameter in template["Parameters"].items()
    } | examples
    secret_values = {
        "TEGAMI_DATABASE_URL": "postgresql://tegami:pw@db.internal:5432/tegami?sslmode=require",
        "TEGAMI_UNSUBSCRIBE_SECRET": "x" * 32,
        "TEGAMI_ADDRESS_HASH_SECRET": "y" * 32,
        "TEGAMI_METRICS_TOKEN": "z" * 48,
        "TEGAMI_ALERT_WEBHOOK_URL": "https://hooks.slack.com/services/T/B/x",
        "TEGAMI_WEBHOOK_SECRET": "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    }

    def resolve(value: Any) -> str:
        if isinstance(value, str):
            return value
        if "Ref" in value:
            return values.get(value["Ref"], f"<{value['Ref']}>")
        if "Fn::Sub" in value:
            return re.sub(r"\$\{([^}]+)\}", lambda m: values.get(m[1], "stack"), value["Fn::Sub"])
        raise AssertionError(value)

    env = {
        name: resolve(value)
        for name, (_, value) in environment(template, "WorkerTaskDefinition").items()
    }
    env |= {name: secret_values[name] for name in secrets(template, "WorkerTaskDefinition")}
    # Read from the environment, as the task's container reads it.
    for name in [name for name in os.environ if name.startswith("TEGAMI_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings()  # filled from the environment
    assert settings.docs is False
    assert settings.run_worker is True
    assert settings.cloudwatch_emf is True
    assert settings.webhook_url == "https://app.proworks.jp/api/tegami"
    assert settings.metrics_token is not None
    assert settings.db_max_processes == int(template["Parameters"]["DbMaxProcesses"]["Default"])


def test_the_connection_budget_counts_every_task_the_stack_may_run(
    template: dict[str, Any],
) -> None:
    defaults = {name: p.get("Default") for name, p in template["Parameters"].items()}
    # ApiMaxCount + WorkerMaxCount + 2 one-off tasks, as the parameter's description says.
    assert defaults["DbMaxProcesses"] == defaults["ApiMaxCount"] + defaults["WorkerMaxCount"] + 2
    budget = (defaults["DbPoolSize"] + defaults["DbMaxOverflow"]) * defaults["DbMaxProcesses"]
    runbook = RUNBOOK.read_text()
    # The docs' table has the stack's defaults as a row, with the same total.
    row = re.search(
        rf"^\| {defaults['ApiMaxCount']} \| {defaults['WorkerMaxCount']} \| 2 \| "
        rf"{defaults['DbPoolSize']} \+ {defaults['DbMaxOverflow']} \| {budget} \|",
        runbook,
        flags=re.MULTILINE,
    )
    assert row, "deploy/README.md's connection budget table shows the stack's defaults"


def _alarm_metrics(alarm: dict[str, Any]) -> list[tuple[Any, str, tuple[str, ...]]]:
    """(namespace, metric, dimension names) of every metric an alarm reads."""
    if "MetricName" in alarm:
        dims = tuple(sorted(d["Name"] for d in alarm.get("Dimensions", [])))
        return [(alarm["Namespace"], alarm["MetricName"], dims)]
    found = []
    for query in alarm["Metrics"]:
        if "MetricStat" in query:
            metric = query["MetricStat"]["Metric"]
            dims = tuple(sorted(d["Name"] for d in metric.get("Dimensions", [])))
            found.append((metric["Namespace"], metric["MetricName"], dims))
    return found


def _log_filter_metrics(template: dict[str, Any]) -> set[str]:
    return {
        transformation["MetricName"]
        for props in resources(template, "AWS::Logs::MetricFilter").values()
        for transformation in props["MetricTransformations"]
        if transformation["MetricNamespace"] == NAMESPACE
    }


def test_every_alarm_reads_a_metric_tegami_emits(template: dict[str, Any]) -> None:
    from_logs = _log_filter_metrics(template)
    assert from_logs == {"ReputationAlerts", "SesSendingPaused"}
    seen = set()
    for name, alarm in resources(template, "AWS::CloudWatch::Alarm").items():
        for namespace, metric, dims in _alarm_metrics(alarm):
            if namespace == NAMESPACE:
                seen.add(metric)
                if metric in from_logs:
                    assert dims == ()
                else:
                    assert metric in EMITTED, (name, metric)
                    assert dims in EMITTED[metric], (name, metric, dims)
            else:
                assert namespace in ("AWS/SES", "AWS/ApplicationELB"), (name, namespace)
    assert {"OutboxDueAgeSeconds", "EmailsSent", "EmailsFailed", "WebhookDeliveries"} <= seen
    given_up = template["Resources"]["WebhookGivenUpAlarm"]["Properties"]["Dimensions"]
    # The dispatcher's outcome for a delivery with no retry left (app/webhooks/dispatcher.py).
    assert given_up == [{"Name": "Outcome", "Value": "failed"}]


def _dashboard(template: dict[str, Any]) -> dict[str, Any]:
    body = template["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    rendered = re.sub(r"\$\{([^}]+)\}", lambda m: f"<{m[1]}>", body)
    return dict(json.loads(rendered))


def test_the_dashboard_shows_only_metrics_tegami_emits(template: dict[str, Any]) -> None:
    namespace = "tegami/<AWS::StackName>"
    shown: set[str] = set()
    for widget in _dashboard(template)["widgets"]:
        if widget["type"] != "metric":
            continue
        for line in widget["properties"]["metrics"]:
            if isinstance(line[0], dict):
                found = re.fullmatch(
                    r"SEARCH\('\{([^,}]+),([^}]+)\} MetricName=\"(\w+)\"', '\w+', \d+\)",
                    line[0]["expression"],
                )
                assert found, line
                space, dims, metric = found[1], tuple(found[2].split(",")), found[3]
            else:
                strings = [part for part in line if isinstance(part, str)]
                space, metric = strings[0], strings[1]
                dims = tuple(sorted(strings[2::2]))
            if space != namespace:
                assert space in ("AWS/ApplicationELB", "ECS/ContainerInsights"), space
                continue
            assert metric in EMITTED, metric
            assert dims in EMITTED[metric], (metric, dims)
            shown.add(metric)
    # What the issue asks the dashboard for.
    assert {
        "EmailsAccepted",
        "EmailsSent",
        "EmailsFailed",
        "OutboxDepth",
        "OutboxOldestAgeSeconds",
        "SendLatency",
        "BounceRate",
        "ComplaintRate",
        "SnsMessages",
        "WebhookDeliveries",
    } <= shown
    alarms = next(w for w in _dashboard(template)["widgets"] if w["type"] == "alarm")
    assert len(alarms["properties"]["alarms"]) == 8


def test_every_alarm_a_person_gets_has_its_runbook_line(template: dict[str, Any]) -> None:
    runbook = RUNBOOK.read_text()
    section = runbook.split("\n## Alarms\n", 1)[1].split("\n## ", 1)[0]
    told = {
        name
        for name, alarm in resources(template, "AWS::CloudWatch::Alarm").items()
        if alarm.get("AlarmActions") == [ALERTS]
    }
    assert len(told) == 10
    for name in told:
        assert re.search(rf"^\| `{name}` \|", section, flags=re.MULTILINE), name
    # The scaling alarms tell no one; they only move the worker count.
    for name in ("WorkerBehindAlarm", "WorkerIdleAlarm"):
        actions = template["Resources"][name]["Properties"]["AlarmActions"]
        assert actions in ([ref("WorkerScaleOutPolicy")], [ref("WorkerScaleInPolicy")])


def test_the_worker_scales_on_how_late_due_mail_is(template: dict[str, Any]) -> None:
    target = template["Resources"]["WorkerScalableTarget"]["Properties"]
    assert target["ResourceId"] == {"Fn::Sub": "service/${Cluster}/${WorkerService.Name}"}
    assert target["MinCapacity"] == ref("WorkerMinCount")
    assert target["MaxCapacity"] == ref("WorkerMaxCount")
    for alarm, policy, adjustment in (
        ("WorkerBehindAlarm", "WorkerScaleOutPolicy", 1),
        ("WorkerIdleAlarm", "WorkerScaleInPolicy", -1),
    ):
        props = template["Resources"][alarm]["Properties"]
        assert props["MetricName"] == "OutboxDueAgeSeconds" and props["Namespace"] == NAMESPACE
        assert props["AlarmActions"] == [ref(policy)]
        steps = template["Resources"][policy]["Properties"]["StepScalingPolicyConfiguration"]
        assert steps["StepAdjustments"][0]["ScalingAdjustment"] == adjustment
        assert template["Resources"][policy]["Properties"]["ScalingTargetId"] == ref(
            "WorkerScalableTarget"
        )


def test_one_off_tasks_run_commands_tegami_has(template: dict[str, Any]) -> None:
    parser = build_parser()
    assert container(template, "MigrateTaskDefinition")["Command"] == ["tegami", "migrate"]
    assert container(template, "CommandTaskDefinition")["Command"] == ["tegami", "doctor"]
    # Every command the runbook gives the command task (`--overrides`) is one the CLI parses.
    runbook = RUNBOOK.read_text()
    overridden = re.findall(r'\["tegami"(?:, "[^"]*")*\]', runbook)
    commands = [json.loads(found) for found in overridden]
    assert {tuple(c[1:3]) for c in commands} >= {("api-key", "create"), ("held", "list")}
    for command in commands:
        assert command[0] == "tegami"
        parser.parse_args(command[1:])
    for output in ("MigrateTaskDefinitionArn", "CommandTaskDefinitionArn", "TaskNetwork"):
        assert output in template["Outputs"] and output in runbook


def test_the_ses_half_is_the_app_runner_stacks(template: dict[str, Any]) -> None:
    """The domain, its events and SES's reputation alarms are the same in both stacks."""
    app_runner_stack.test_ses_publishes_every_event_tegami_applies_to_the_subscribed_topic(template)
    app_runner_stack.test_the_topic_posts_over_https_to_tegamis_sns_endpoint(template)
    app_runner_stack.test_only_ses_may_publish_to_the_events_topic(template)
    app_runner_stack.test_ses_reputation_alarms_use_the_reputation_modules_levels(template)
    app_runner_stack.test_dns_outputs_are_the_records_domain_check_looks_for(template)


def test_the_task_role_may_do_what_tegami_and_its_doctor_do(template: dict[str, Any]) -> None:
    (policy,) = template["Resources"]["ServiceRole"]["Properties"]["Policies"]
    actions = set()
    for statement in policy["PolicyDocument"]["Statement"]:
        listed = statement["Action"]
        actions |= {listed} if isinstance(listed, str) else set(listed)
    assert actions == {
        "ses:SendEmail",
        "ses:SendRawEmail",
        "ses:GetAccount",
        "ses:DeleteSuppressedDestination",
        "ses:ListSuppressedDestinations",
        "ses:GetConfigurationSetEventDestinations",
        "ses:GetEmailIdentity",
        "sns:ListSubscriptionsByTopic",
        "sns:GetSubscriptionAttributes",
    }
