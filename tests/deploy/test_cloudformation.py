"""The CloudFormation stack is wired to what tegami expects: events, endpoint, alarms, role.

The template is read with cfn-lint's own decoder (it knows ``!Ref``, ``!Sub``, ``!If``), and
compared with the code it serves: the SNS route, the reputation thresholds, the log line shape,
the settings, and the DNS records ``tegami domain check`` looks for.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any

import pytest
from cfnlint.decode import decode

from app.config import Settings
from app.ops.health import router as health_router
from app.ops.logging import JsonFormatter
from app.reputation import watch as reputation
from app.reputation.watch import Level, level_of
from app.setup.domain import DEFAULT_MAIL_FROM, expected_records
from app.sns.router import router as sns_router

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "deploy" / "cloudformation" / "tegami.yaml"
ALERTS = {"Fn::If": ["CreateAlertTopic", {"Ref": "AlertTopic"}, {"Ref": "AlertTopicArn"}]}


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    decoded, problems = decode(str(TEMPLATE))
    assert not problems, problems
    assert decoded is not None
    return dict(decoded)


def resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {
        name: resource["Properties"]
        for name, resource in template["Resources"].items()
        if resource["Type"] == kind
    }


def only(template: dict[str, Any], kind: str) -> dict[str, Any]:
    (found,) = resources(template, kind).values()
    return found


def render(value: Any, names: dict[str, str]) -> str:
    """A ``!Sub`` string with its ``${...}`` filled from names (every one must be known)."""
    assert isinstance(value, dict) and list(value) == ["Fn::Sub"], value
    return re.sub(r"\$\{([^}]+)\}", lambda m: names[m.group(1)], value["Fn::Sub"])


def ref(name: str) -> dict[str, str]:
    return {"Ref": name}


def test_ses_publishes_every_event_tegami_applies_to_the_subscribed_topic(
    template: dict[str, Any],
) -> None:
    destination = only(template, "AWS::SES::ConfigurationSetEventDestination")
    assert destination["ConfigurationSetName"] == ref("ConfigurationSet")
    events = destination["EventDestination"]
    assert events["Enabled"] is True
    # CloudFormation's spelling of SEND, REJECT, BOUNCE, COMPLAINT, DELIVERY, DELIVERY_DELAY,
    # RENDERING_FAILURE.
    assert sorted(events["MatchingEventTypes"]) == sorted(
        ["send", "reject", "bounce", "complaint", "delivery", "deliveryDelay", "renderingFailure"]
    )
    topic = events["SnsDestination"]["TopicARN"]
    assert topic == ref("SesEventsTopic")
    assert template["Resources"]["SesEventsTopic"]["Type"] == "AWS::SNS::Topic"

    identity = only(template, "AWS::SES::EmailIdentity")
    assert identity["EmailIdentity"] == ref("Domain")
    assert identity["DkimAttributes"]["SigningEnabled"] is True
    assert identity["ConfigurationSetAttributes"]["ConfigurationSetName"] == ref("ConfigurationSet")
    config = only(template, "AWS::SES::ConfigurationSet")
    assert config["ReputationOptions"]["ReputationMetricsEnabled"] is True


def test_the_topic_posts_over_https_to_tegamis_sns_endpoint(template: dict[str, Any]) -> None:
    subscriptions = [
        props
        for props in resources(template, "AWS::SNS::Subscription").values()
        if props["TopicArn"] == ref("SesEventsTopic")
    ]
    assert len(subscriptions) == 1
    (subscription,) = subscriptions
    assert subscription["Protocol"] == "https"
    endpoint = render(subscription["Endpoint"], {"PublicBaseUrl": "https://tegami.proworks.jp"})
    path = endpoint.removeprefix("https://tegami.proworks.jp")
    assert path == "/sns/ses-events"
    assert path in {getattr(route, "path", None) for route in sns_router.routes}


def test_only_ses_may_publish_to_the_events_topic(template: dict[str, Any]) -> None:
    policies = [
        props
        for props in resources(template, "AWS::SNS::TopicPolicy").values()
        if ref("SesEventsTopic") in props["Topics"]
    ]
    assert len(policies) == 1
    (statement,) = policies[0]["PolicyDocument"]["Statement"]
    assert statement["Effect"] == "Allow"
    assert statement["Principal"] == {"Service": "ses.amazonaws.com"}
    assert statement["Action"] == "sns:Publish"
    assert statement["Resource"] == ref("SesEventsTopic")
    conditions = statement["Condition"]["StringEquals"]
    assert conditions["AWS:SourceAccount"] == ref("AWS::AccountId")
    names = {
        "AWS::Partition": "aws",
        "AWS::Region": "ap-northeast-1",
        "AWS::AccountId": "123456789012",
        "ConfigurationSet": "tegami",
    }
    assert (
        render(conditions["AWS:SourceArn"], names)
        == "arn:aws:ses:ap-northeast-1:123456789012:configuration-set/tegami"
    )


def test_ses_reputation_alarms_use_the_reputation_modules_levels(
    template: dict[str, Any],
) -> None:
    thresholds: dict[str, list[float]] = {}
    for alarm in resources(template, "AWS::CloudWatch::Alarm").values():
        if alarm.get("Namespace") == "AWS/SES":
            assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
            thresholds.setdefault(alarm["MetricName"], []).append(float(alarm["Threshold"]))
    review = {
        "Reputation.BounceRate": (
            reputation.BOUNCE_WARNING,
            reputation.BOUNCE_REVIEW,
            reputation.BOUNCE_PAUSE,
        ),
        "Reputation.ComplaintRate": (
            reputation.COMPLAINT_WARNING,
            reputation.COMPLAINT_REVIEW,
            reputation.COMPLAINT_PAUSE,
        ),
    }
    assert set(thresholds) == set(review)
    for metric, (at_warning, at_review, at_pause) in review.items():
        warning, alert = sorted(thresholds[metric])
        assert alert == at_review
        assert warning == at_warning
        # The alarms fire exactly where tegami's own levels change (level_of counts >=).
        for threshold, level in ((warning, Level.WARNING), (alert, Level.ALERT)):
            assert level_of(threshold, review=at_review, pause=at_pause) is level
            below = math.nextafter(threshold, 0.0)
            assert level_of(below, review=at_review, pause=at_pause) is not level


def test_log_alarms_count_tegamis_alert_lines(template: dict[str, Any]) -> None:
    alarms = {
        (alarm["Namespace"]["Fn::Sub"], alarm["MetricName"]): alarm
        for alarm in resources(template, "AWS::CloudWatch::Alarm").values()
        if alarm["Namespace"] != "AWS/SES"
    }
    watched = set()
    for metric_filter in resources(template, "AWS::Logs::MetricFilter").values():
        found = re.fullmatch(r'\{ \$\.event = "(\w+)" \}', metric_filter["FilterPattern"])
        assert found, metric_filter["FilterPattern"]
        event = found.group(1)
        watched.add(event)
        # A line tegami logs with that event matches the pattern's JSON path.
        record = logging.makeLogRecord({"msg": "x", "event": event})
        assert json.loads(JsonFormatter().format(record))["event"] == event
        (transformation,) = metric_filter["MetricTransformations"]
        alarm = alarms[(transformation["MetricNamespace"]["Fn::Sub"], transformation["MetricName"])]
        assert alarm["Statistic"] == "Sum" and float(alarm["Threshold"]) == 1
        assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
        # App Runner's application log group, or the stack's own group for another host.
        group = metric_filter["LogGroupName"]["Fn::If"]
        assert group[0] == "UseAppRunner" and group[2] == ref("AppLogGroup")
        assert render(group[1], {"AWS::StackName": "tegami", "Service.ServiceId": "abc"}) == (
            "/aws/apprunner/tegami/abc/application"
        )
    assert watched == {"reputation_alert", "ses_sending_paused"}


def test_every_alarm_goes_to_the_alert_topic(template: dict[str, Any]) -> None:
    alarms = resources(template, "AWS::CloudWatch::Alarm")
    assert len(alarms) == 6
    for name, alarm in alarms.items():
        assert alarm["AlarmActions"] == [ALERTS], name
        if alarm["Namespace"] == "AWS/SES":  # a rate falling back is news too
            assert alarm["OKActions"] == [ALERTS], name
    subscription = template["Resources"]["AlertEmailSubscription"]
    assert subscription["Condition"] == "CreateAlertTopic"
    assert subscription["Properties"]["Protocol"] == "email"
    assert subscription["Properties"]["Endpoint"] == ref("AlertEmail")
    assert subscription["Properties"]["TopicArn"] == ref("AlertTopic")


def test_service_role_may_only_send_as_the_domain_read_the_account_and_its_secrets(
    template: dict[str, Any],
) -> None:
    role = template["Resources"]["ServiceRole"]["Properties"]
    assert "ManagedPolicyArns" not in role
    (policy,) = role["Policies"]
    statements = policy["PolicyDocument"]["Statement"]
    grants = {}
    for statement in statements:
        assert statement["Effect"] == "Allow"
        actions = statement["Action"]
        grants[tuple(sorted([actions] if isinstance(actions, str) else actions))] = statement[
            "Resource"
        ]
    assert set(grants) == {
        ("ses:SendEmail", "ses:SendRawEmail"),
        ("ses:GetAccount",),
        ("ses:DeleteSuppressedDestination",),
        ("ses:GetConfigurationSetEventDestinations", "ses:GetEmailIdentity"),
        ("sns:ListSubscriptionsByTopic",),
        ("sns:GetSubscriptionAttributes",),
        ("secretsmanager:GetSecretValue",),
    }
    names = {
        "AWS::Partition": "aws",
        "AWS::Region": "ap-northeast-1",
        "AWS::AccountId": "123456789012",
        "EmailIdentity": "proworks.jp",
        "ConfigurationSet": "tegami",
    }
    assert sorted(render(arn, names) for arn in grants[("ses:SendEmail", "ses:SendRawEmail")]) == [
        "arn:aws:ses:ap-northeast-1:123456789012:configuration-set/tegami",
        "arn:aws:ses:ap-northeast-1:123456789012:identity/proworks.jp",
    ]
    assert grants[("ses:GetAccount",)] == "*"
    assert grants[("ses:DeleteSuppressedDestination",)] == "*"
    setup_reads = grants[("ses:GetConfigurationSetEventDestinations", "ses:GetEmailIdentity")]
    assert sorted(render(arn, names) for arn in setup_reads) == [
        "arn:aws:ses:ap-northeast-1:123456789012:configuration-set/tegami",
        "arn:aws:ses:ap-northeast-1:123456789012:identity/proworks.jp",
    ]
    assert grants[("sns:ListSubscriptionsByTopic",)] == {"Ref": "SesEventsTopic"}
    assert grants[("sns:GetSubscriptionAttributes",)] == "*"
    secrets = template["Resources"]["Service"]["Properties"]["SourceConfiguration"][
        "ImageRepository"
    ]["ImageConfiguration"]["RuntimeEnvironmentSecrets"]
    # Exactly the secrets the service is given, the optional webhook only when it is given.
    assert grants[("secretsmanager:GetSecretValue",)] == [
        secret["Value"] if "Name" in secret else _webhook_arn(secret) for secret in secrets
    ]


def _webhook_arn(secret: dict[str, Any]) -> dict[str, Any]:
    condition, given, absent = secret["Fn::If"]
    return {"Fn::If": [condition, given["Value"], absent]}


def _given(item: dict[str, Any]) -> dict[str, Any]:
    """An entry, or the one a condition gives (``!If [Cond, entry, !Ref AWS::NoValue]``)."""
    if "Fn::If" in item:
        _condition, given, absent = item["Fn::If"]
        assert absent == ref("AWS::NoValue")
        return dict(given)
    return item


def test_service_is_checked_on_readyz_and_gets_every_required_setting(
    template: dict[str, Any],
) -> None:
    service = template["Resources"]["Service"]
    assert service["Condition"] == "UseAppRunner"
    props = service["Properties"]
    health = props["HealthCheckConfiguration"]
    assert health["Protocol"] == "HTTP" and health["Path"] == "/readyz"
    assert "/readyz" in {getattr(route, "path", None) for route in health_router.routes}
    assert props["InstanceConfiguration"]["InstanceRoleArn"] == {
        "Fn::GetAtt": ["ServiceRole", "Arn"]
    }

    image = props["SourceConfiguration"]["ImageRepository"]["ImageConfiguration"]
    assert image["Port"] == "8000"
    env = {
        item["Name"]: item["Value"] for item in map(_given, image["RuntimeEnvironmentVariables"])
    }
    secrets = [_given(item)["Name"] for item in image["RuntimeEnvironmentSecrets"]]
    given = set(env) | set(secrets)
    assert len(given) == len(env) + len(secrets)  # nothing set twice
    settings = {f"TEGAMI_{name.upper()}" for name in Settings.model_fields}
    required = {
        f"TEGAMI_{name.upper()}"
        for name, field in Settings.model_fields.items()
        if field.is_required()
    }
    assert required <= given
    assert given - settings == {"AWS_REGION"}
    assert env["TEGAMI_SES_CONFIGURATION_SET"] == ref("ConfigurationSet")
    assert env["TEGAMI_SNS_TOPIC_ARNS"] == ref("SesEventsTopic")
    assert env["TEGAMI_PUBLIC_BASE_URL"] == ref("PublicBaseUrl")
    # Webhooks can be turned on from the stack (a hand edit is undone by the next update).
    assert env["TEGAMI_WEBHOOK_URL"] == ref("WebhookUrl")
    assert "TEGAMI_WEBHOOK_SECRET" in secrets and "TEGAMI_METRICS_TOKEN" in secrets
    assert env["TEGAMI_DOCS"] == ref("Docs")
    assert template["Parameters"]["Docs"]["Default"] == "false"
    for secret in (
        "TEGAMI_DATABASE_URL",
        "TEGAMI_UNSUBSCRIBE_SECRET",
        "TEGAMI_ADDRESS_HASH_SECRET",
    ):
        assert secret in secrets  # never a plain environment value


def test_dns_outputs_are_the_records_domain_check_looks_for(template: dict[str, Any]) -> None:
    mail_from = template["Parameters"]["MailFromSubdomain"]["Default"]
    assert mail_from == DEFAULT_MAIL_FROM
    identity = template["Resources"]["EmailIdentity"]["Properties"]
    assert identity["MailFromAttributes"]["BehaviorOnMxFailure"] == "USE_DEFAULT_VALUE"
    names = {
        "Domain": "proworks.jp",
        "MailFromSubdomain": mail_from,
        "AWS::Region": "ap-northeast-1",
    }
    assert render(identity["MailFromAttributes"]["MailFromDomain"], names) == (
        f"{mail_from}.proworks.jp"
    )
    tokens = ["tok1", "tok2", "tok3"]
    for i, token in enumerate(tokens, start=1):
        names[f"EmailIdentity.DkimDNSTokenName{i}"] = f"{token}._domainkey.proworks.jp"
        names[f"EmailIdentity.DkimDNSTokenValue{i}"] = f"{token}.dkim.amazonses.com"
    outputs = template["Outputs"]
    printed = {
        render(outputs[name]["Value"], names)
        for name in (
            "DkimRecord1",
            "DkimRecord2",
            "DkimRecord3",
            "MailFromMxRecord",
            "MailFromSpfRecord",
            "SpfRecord",
            "DmarcRecord",
        )
    }
    wanted = expected_records(
        "proworks.jp",
        dkim_tokens=tokens,
        mail_from=f"{mail_from}.proworks.jp",
        region="ap-northeast-1",
    )
    assert printed == {record.zone_line for record in wanted}


def test_deploy_page_names_exactly_the_stacks_outputs(template: dict[str, Any]) -> None:
    page = (ROOT / "docs" / "deploy.md").read_text()
    section = page.split("\n## The App Runner stack\n", 1)[1].split("\n## ", 1)[0]
    table = re.findall(r"^ *\| `(\w+)` \|", section, flags=re.MULTILINE)
    assert table, "docs/deploy.md's App Runner section lists the stack's outputs in a table"
    assert sorted(table) == sorted(template["Outputs"])
    assert "deploy/cloudformation/tegami.yaml" in section
