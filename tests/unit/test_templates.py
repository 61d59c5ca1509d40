"""Channel templates: declared in the channel, compiled in Jinja's sandbox, rendered per language with
escaping that follows the parse mode (clarion.templates, ADR 0007)."""

from __future__ import annotations

from typing import Any

import pytest
from clarion.db.channels import ChannelRecord, StoredTemplate
from clarion.models import NotificationChannelSpec
from clarion.models.channel import ChannelTemplate
from clarion.models.notification import NotificationRequest
from clarion.templates import TemplateProblem, render_template, request_content, template_problem
from pydantic import ValidationError

pytestmark = pytest.mark.unit


def _template(*variants: dict[str, Any], variables: list[dict[str, Any]] | None = None,
              **extra: Any) -> ChannelTemplate:
    return ChannelTemplate.model_validate({
        "name": "order-shipped", "variables": [{"name": "orderId"}] if variables is None else variables,
        "variants": list(variants), **extra})


def _channel(*templates: ChannelTemplate, type_: str = "telegram") -> ChannelRecord:
    return ChannelRecord(
        id=1, key="shop.alerts", type=type_, bot_id=None, bot_username=None, api_base_url=None,
        webhook_secret_sha256=None, ready=True,
        templates={t.name: StoredTemplate.of(t, template_problem(t)) for t in templates})


def _render(template: ChannelTemplate, variables: dict[str, object], language: str | None = None,
            type_: str = "telegram") -> dict[str, Any]:
    return render_template(_channel(template, type_=type_), template.name, language, variables)


def _problem(source: str, variables: list[dict[str, Any]] | None = None) -> str | None:
    return template_problem(_template({"language": "en", "text": source}, variables=variables))


def test_telegram_template_renders_the_content_the_worker_sends_with_template_and_language() -> None:
    template = _template({"language": "en", "text": "Order {{ orderId }} shipped",
                          "buttons": [[{"text": "Track {{ orderId }}",
                                        "url": "https://shop.example/o/{{ orderId | urlencode }}"}]]})

    content = _render(template, {"orderId": "A 7"})

    assert content == {
        "text": "Order A 7 shipped", "parseMode": "None", "disableNotification": False,
        "buttons": [[{"text": "Track A 7", "url": "https://shop.example/o/A%207"}]],
        "template": "order-shipped", "language": "en"}


def test_email_template_renders_subject_text_and_html() -> None:
    template = _template({"language": "en", "subject": "Order {{ orderId }}", "text": "Shipped {{ orderId }}",
                          "html": "<p>Shipped <b>{{ orderId }}</b></p>"})

    content = _render(template, {"orderId": "<7>"}, type_="email")

    assert (content["subject"], content["text"], content["html"]) == (
        "Order <7>", "Shipped <7>", "<p>Shipped <b>&lt;7&gt;</b></p>")
    assert (content["template"], content["language"]) == ("order-shipped", "en")


@pytest.mark.parametrize(("parse_mode", "expected"), [
    ("HTML", "<b>Hi</b> &lt;i&gt;Tom &amp; Jerry&lt;/i&gt;"),
    ("MarkdownV2", "*Hi* <i\\>Tom & Jerry</i\\>"),
    (None, "<b>Hi</b> <i>Tom & Jerry</i>"),
])
def test_variable_values_are_escaped_for_the_parse_mode_and_the_template_text_is_not(
    parse_mode: str | None, expected: str,
) -> None:
    bold = "*Hi*" if parse_mode == "MarkdownV2" else "<b>Hi</b>"
    variant: dict[str, Any] = {"language": "en", "text": f"{bold} {{{{ who }}}}"}
    if parse_mode:
        variant["parseMode"] = parse_mode

    content = _render(_template(variant, variables=[{"name": "who"}]), {"who": "<i>Tom & Jerry</i>"})

    assert content["text"] == expected


def test_markdown_v2_escapes_every_special_character_of_a_value() -> None:
    special = "_*[]()~`>#+-=|{}.!\\"
    template = _template({"language": "en", "parseMode": "MarkdownV2", "text": "{{ orderId }}"})

    text = _render(template, {"orderId": special})["text"]

    assert text == "".join("\\" + c for c in special)


def test_numbers_and_booleans_print_as_json_would() -> None:
    template = _template({"language": "en", "text": "{{ n }} {{ f }} {{ b }}{% if b %} yes{% endif %}"},
                         variables=[{"name": "n"}, {"name": "f"}, {"name": "b"}])

    assert _render(template, {"n": 3, "f": 2.5, "b": False})["text"] == "3 2.5 false"


def test_language_falls_back_from_region_to_primary_to_the_default_and_says_which_was_used() -> None:
    template = _template({"language": "en", "text": "Hello"}, {"language": "de", "text": "Hallo"},
                         {"language": "pt", "text": "Olá"}, defaultLanguage="de")

    used = {asked: (c := _render(template, {"orderId": 1}, asked))["language"] + ":" + c["text"]
            for asked in (None, "en", "pt-BR", "fr")}

    assert used == {None: "de:Hallo", "en": "en:Hello", "pt-BR": "pt:Olá", "fr": "de:Hallo"}


def test_a_missing_variable_is_named_and_a_default_fills_an_optional_one() -> None:
    template = _template({"language": "en", "text": "{{ orderId }} for {{ who }}"},
                         variables=[{"name": "orderId"}, {"name": "who", "default": "you"}])

    with pytest.raises(TemplateProblem) as refused:
        _render(template, {"who": "Ann"})
    assert refused.value.field == "variables.orderId"
    assert "orderId" in refused.value.message
    assert _render(template, {"orderId": 5, "unused": 1})["text"] == "5 for you"


def test_an_unknown_template_is_a_problem_of_the_name() -> None:
    with pytest.raises(TemplateProblem) as refused:
        render_template(_channel(), "nope", None, {})
    assert refused.value.field == "name" and "shop/alerts has no template 'nope'" in refused.value.message


def test_a_broken_template_is_refused_by_name_with_the_operators_reason() -> None:
    broken = _template({"language": "en", "text": "{{ orderId"})

    with pytest.raises(TemplateProblem) as refused:
        _render(broken, {"orderId": 1})

    assert refused.value.field == "name" and "does not compile" in refused.value.message


def test_rendered_text_over_telegrams_4096_characters_is_refused() -> None:
    template = _template({"language": "en", "text": "{{ orderId }}"})

    with pytest.raises(TemplateProblem) as refused:
        _render(template, {"orderId": "x" * 4097})

    assert refused.value.field == "variables" and "4096" in refused.value.message


def test_a_value_cannot_put_a_line_break_into_an_email_subject() -> None:
    template = _template({"language": "en", "subject": "Order {{ orderId }}", "text": "x"})

    with pytest.raises(TemplateProblem) as refused:
        _render(template, {"orderId": "1\r\nBcc: victim@example.org"}, type_="email")

    assert refused.value.field == "variables" and "subject" in refused.value.message


@pytest.mark.parametrize(("source", "reason"), [
    ("{{ ''.__class__ }}", "Getattr is not allowed"),
    ("{{ orderId.__class__.__mro__ }}", "Getattr is not allowed"),
    ("{{ orderId['x'] }}", "Getitem is not allowed"),
    ("{{ lipsum() }}", "Call is not allowed"),
    ("{% for i in range(9) %}x{% endfor %}", "For is not allowed"),
    ("{% macro m() %}{% endmacro %}", "Macro is not allowed"),
    ("{% include 'x' %}", "Include is not allowed"),
    ("{{ 9 ** 9 }}", "Pow is not allowed"),
    ("{{ '%0999999d' % 1 }}", "Mod is not allowed"),
    ("{{ orderId | center(100) }}", "No filter named 'center'"),
    ("{{ other }}", "uses undeclared variable other"),
    ("x\n{{ orderId", "language en text, line 2:"),
])
def test_the_sandbox_refuses_what_a_notification_template_does_not_need(source: str, reason: str) -> None:
    problem = _problem(source)

    assert problem is not None and reason in problem


def test_repeating_a_value_past_the_cap_is_stopped_by_the_sandbox() -> None:
    template = _template({"language": "en", "text": "{{ orderId * 100000 }}"})

    assert _render(template, {"orderId": 3})["text"] == "300000"
    with pytest.raises(TemplateProblem) as refused:
        _render(template, {"orderId": "ab"})
    assert refused.value.field == "name" and "sandbox" in refused.value.message


def test_if_set_filters_and_tests_are_allowed() -> None:
    source = ("{% set shout = orderId | upper %}{% if orderId is string and orderId | length > 2 %}"
              "{{ shout | truncate(5, true, '', 0) }}{% else %}{{ orderId | default('none') }}{% endif %}")

    assert _problem(source) is None
    assert _render(_template({"language": "en", "text": source}), {"orderId": "abcdefgh"})["text"] == "ABCDE"


def test_button_labels_and_urls_are_checked_like_literal_buttons_after_rendering() -> None:
    template = _template({"language": "en", "text": "x",
                          "buttons": [[{"text": "Open", "url": "https://shop.example/{{ orderId }}"}]]})

    with pytest.raises(TemplateProblem) as refused:
        _render(template, {"orderId": "a b"})

    assert refused.value.field == "variables" and "buttons" in refused.value.message


def test_an_edited_template_is_a_new_revision_and_renders_the_new_text() -> None:
    first = _template({"language": "en", "text": "v1 {{ orderId }}"})
    second = _template({"language": "en", "text": "v2 {{ orderId }}"})

    assert first.revision != second.revision
    assert _render(first, {"orderId": 1})["text"] == "v1 1"
    assert _render(second, {"orderId": 1})["text"] == "v2 1"


def test_request_content_renders_a_template_and_keeps_disable_notification() -> None:
    channel = _channel(_template({"language": "en", "text": "Order {{ orderId }}"}))
    request = NotificationRequest.model_validate({
        "channel": "shop/alerts", "recipient": {"chatId": 1},
        "content": {"template": {"name": "order-shipped", "variables": {"orderId": 9}},
                    "disableNotification": True}})

    content = request_content(channel, request)

    assert (content["text"], content["disableNotification"]) == ("Order 9", True)


@pytest.mark.parametrize(("content", "message"), [
    ({"text": "x", "template": {"name": "t"}}, "leave out text"),
    ({"parseMode": "HTML", "template": {"name": "t"}}, "leave out parseMode"),
    ({}, "set text, or a template"),
    ({"template": {"name": "Not_A_Label"}}, "pattern"),
])
def test_content_is_literal_or_a_template_never_both(content: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as refused:
        NotificationRequest.model_validate({"channel": "shop/alerts", "recipient": {"chatId": 1},
                                            "content": content})
    assert message in str(refused.value)


@pytest.mark.parametrize(("spec", "message"), [
    ({"type": "telegram", "templates": [{"name": "a", "variants": [
        {"language": "en", "text": "x", "subject": "s"}]}]}, "subject and html are for email channels"),
    ({"type": "email", "templates": [{"name": "a", "variants": [{"language": "en", "text": "x"}]}]},
     "an email template needs a subject"),
    ({"type": "telegram", "templates": [{"name": "a", "defaultLanguage": "de", "variants": [
        {"language": "en", "text": "x"}]}]}, "defaultLanguage must be the language of one of the variants"),
    ({"type": "telegram", "templates": [{"name": "a", "variants": [{"language": "en", "text": "x"}]},
                                        {"name": "a", "variants": [{"language": "en", "text": "y"}]}]},
     "each template needs its own name"),
])
def test_a_channel_spec_with_templates_that_do_not_fit_its_type_is_invalid(
    spec: dict[str, Any], message: str,
) -> None:
    sections = {"telegram": {"botTokenSecretRef": {"name": "bot"}},
                "email": {"host": "smtp", "from": "a@b.example"}}
    with pytest.raises(ValidationError) as refused:
        NotificationChannelSpec.model_validate({**spec, spec["type"]: sections[spec["type"]]})
    assert message in str(refused.value)
