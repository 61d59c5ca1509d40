"""Channel templates rendered by Jinja in a sandbox (ADR 0007, docs/notifications.md).

A template is declared in its channel (`NotificationChannel.spec.templates`); the operator checks that
it compiles (`template_problem`) and stores it in the channel row; the API renders it at accept time
(`render_template`) and stores the rendered content, so the workers send plain content.

The engine, and what it allows:

- `ImmutableSandboxedEnvironment` with `StrictUndefined`: no attribute or item access, no calls, no
  loops, macros, includes or imports (a template is checked node by node; variables are scalars, so
  there is nothing to iterate or look into); `{{ }}`, `{% if %}`, `{% set %}`, the filters in
  `FILTERS` and the standard tests. `*` on strings is capped (`MAX_REPEAT`); `**` and `%` are refused.
- Every name a template reads must be a declared variable (or one it `{% set %}`s).
- Escaping follows the target, and applies to what `{{ }}` prints, never to the template's own text
  (the author's markup): HTML parse mode and email `html` escape HTML; MarkdownV2 backslash-escapes
  its special characters; plain text (parse mode None, email text and subject, button labels and
  URLs) is left as it is. Booleans print as `true` and `false`.

Compiled templates are cached by (channel type, template revision); an edit is a new revision.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import StrictUndefined, TemplateError, TemplateSyntaxError, meta, nodes
from jinja2 import Template as Jinja
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import ValidationError

from clarion import webpush
from clarion.db.channels import ChannelRecord, StoredTemplate
from clarion.models.channel import ChannelTemplate, TemplateVariant
from clarion.models.notification import Content, NotificationRequest, outbox_content

#: The longest string `*` may build inside a template.
MAX_REPEAT = 4096
#: Compiled templates kept (the oldest goes first).
CACHE_SIZE = 4096
FILTERS = ("abs", "capitalize", "d", "default", "float", "int", "length", "lower", "replace", "round",
           "string", "title", "trim", "truncate", "upper", "urlencode", "wordcount")
_ALLOWED_NODES = (
    nodes.Template, nodes.Output, nodes.TemplateData, nodes.Name, nodes.Const, nodes.If, nodes.Assign,
    nodes.Filter, nodes.Test, nodes.Concat, nodes.Compare, nodes.Operand, nodes.And, nodes.Or, nodes.Not,
    nodes.CondExpr, nodes.Add, nodes.Sub, nodes.Mul, nodes.Div, nodes.FloorDiv, nodes.Neg, nodes.Pos,
    nodes.Keyword, nodes.Tuple, nodes.List,
)
_MARKDOWN_SPECIAL = re.compile(r"[_*\[\]()~`>#+\-=|{}.!\\]")


class TemplateProblem(ValueError):
    """A template request that cannot be rendered: `field` is relative to the template reference
    (`name`, `variables.<name>`, `variables`), `message` says why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def _printable(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def _markdown(value: Any) -> str:
    return _MARKDOWN_SPECIAL.sub(r"\\\g<0>", str(_printable(value)))


class _Sandbox(ImmutableSandboxedEnvironment):
    """The sandbox with `*` capped: `{{ 'x' * 10**9 }}` is refused, not built."""

    intercepted_binops = frozenset({"*"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        sequence = (str, list, tuple)
        if operator == "*" and (isinstance(left, sequence) or isinstance(right, sequence)):
            sized, times = (left, right) if isinstance(left, sequence) else (right, left)
            if isinstance(times, int) and len(sized) * times > MAX_REPEAT:
                raise SecurityError(f"'*' would build more than {MAX_REPEAT} characters")
        return super().call_binop(context, operator, left, right)


def _environment(*, autoescape: bool, finalize: Callable[[Any], Any]) -> _Sandbox:
    env = _Sandbox(undefined=StrictUndefined, autoescape=autoescape, finalize=finalize,
                   keep_trailing_newline=True)
    env.filters = {name: env.filters[name] for name in FILTERS}
    env.globals.clear()
    return env


_PLAIN = _environment(autoescape=False, finalize=_printable)
_HTML = _environment(autoescape=True, finalize=_printable)
_MARKDOWN_V2 = _environment(autoescape=False, finalize=_markdown)
_BY_PARSE_MODE = {"HTML": _HTML, "MarkdownV2": _MARKDOWN_V2, "None": _PLAIN}


def _compile(env: _Sandbox, source: str, declared: frozenset[str], where: str) -> Jinja:
    """One template field compiled; TemplateSyntaxError (with `where` in the message) when it is not
    valid Jinja, uses a construct the sandbox does not allow, or reads an undeclared variable."""
    try:
        tree = env.parse(source)
        for node in tree.find_all(nodes.Node):
            if not isinstance(node, _ALLOWED_NODES):
                raise TemplateSyntaxError(f"{type(node).__name__} is not allowed in a template", node.lineno)
        undeclared = sorted(meta.find_undeclared_variables(tree) - declared)  # also finds unknown filters
        if undeclared:
            plural = "s" if len(undeclared) > 1 else ""
            raise TemplateSyntaxError(f"uses undeclared variable{plural} {', '.join(undeclared)}", 1)
        return env.from_string(tree)
    except TemplateSyntaxError as exc:
        line = f", line {exc.lineno}" if exc.lineno and exc.lineno > 1 else ""
        raise TemplateSyntaxError(f"{where}{line}: {exc.message or 'invalid template'}", exc.lineno) from exc


@dataclass(frozen=True)
class _Variant:
    """One language of a template, every field compiled."""

    language: str
    text: Jinja
    parse_mode: str | None
    buttons: list[list[tuple[Jinja, str, Jinja]]]  # (label, "url" | "callbackData", action)
    subject: Jinja | None
    html: Jinja | None

    def render(self, values: Mapping[str, Any]) -> dict[str, Any]:
        content: dict[str, Any] = {"text": self.text.render(values)}
        if self.subject is not None:
            content["subject"] = self.subject.render(values)
            if self.html is not None:
                content["html"] = self.html.render(values)
            return content
        content["parseMode"] = self.parse_mode or "None"
        content["buttons"] = [[{"text": label.render(values), kind: action.render(values)}
                               for label, kind, action in row] for row in self.buttons]
        return content


def _variant(variant: TemplateVariant, declared: frozenset[str]) -> _Variant:
    where = f"language {variant.language}"
    text_env = _BY_PARSE_MODE[variant.parse_mode or "None"]
    rows = []
    for r, row in enumerate(variant.buttons or (), 1):
        compiled_row = []
        for b, button in enumerate(row, 1):
            place = f"{where}, button {r}.{b}"
            kind = "url" if button.url is not None else "callbackData"
            action = button.url if button.url is not None else button.callback_data
            assert action is not None
            compiled_row.append((_compile(_PLAIN, button.text, declared, f"{place} text"), kind,
                                 _compile(_PLAIN, action, declared, f"{place} {kind}")))
        rows.append(compiled_row)
    return _Variant(
        language=variant.language,
        text=_compile(text_env, variant.text, declared, f"{where} text"),
        parse_mode=variant.parse_mode,
        buttons=rows,
        subject=None if variant.subject is None else _compile(_PLAIN, variant.subject, declared,
                                                              f"{where} subject"),
        html=None if variant.html is None else _compile(_HTML, variant.html, declared, f"{where} html"),
    )


@dataclass(frozen=True)
class CompiledTemplate:
    """A template ready to render: its variants by language, its variables' defaults."""

    name: str
    variants: Mapping[str, _Variant]
    default_language: str
    required: tuple[str, ...]
    defaults: Mapping[str, str]

    @classmethod
    def of(cls, template: ChannelTemplate) -> CompiledTemplate:
        """Raises TemplateSyntaxError naming the language and field at fault."""
        declared = frozenset(v.name for v in template.variables)
        return cls(
            name=template.name,
            variants={v.language: _variant(v, declared) for v in template.variants},
            default_language=template.default_language,
            required=tuple(v.name for v in template.variables if v.default is None),
            defaults={v.name: v.default for v in template.variables if v.default is not None},
        )

    def variant(self, language: str | None) -> _Variant:
        """The requested language, else its primary subtag (`pt-BR` → `pt`), else the default."""
        if language:
            found = self.variants.get(language) or self.variants.get(language.partition("-")[0].lower())
            if found is not None:
                return found
        return self.variants[self.default_language]


def template_problem(template: ChannelTemplate) -> str | None:
    """Why the template cannot be used (it does not compile), or None: what the operator reports."""
    try:
        CompiledTemplate.of(template)
    except TemplateSyntaxError as exc:
        return str(exc.message)
    return None


_CACHE: dict[tuple[str, str], CompiledTemplate] = {}


def _compiled(stored: StoredTemplate, template: ChannelTemplate) -> CompiledTemplate:
    key = (stored.name, stored.revision)
    compiled = _CACHE.get(key)
    if compiled is None:
        compiled = CompiledTemplate.of(template)
        if len(_CACHE) >= CACHE_SIZE:
            del _CACHE[next(iter(_CACHE))]
        _CACHE[key] = compiled
    return compiled


def _channel_name(channel: ChannelRecord) -> str:
    return channel.key.replace(".", "/", 1)


def render_template(channel: ChannelRecord, name: str, language: str | None,
                    variables: Mapping[str, object]) -> dict[str, Any]:
    """The outbox `content` (same keys as clarion.models.notification.outbox_content gives:
    text/parseMode/buttons/disableNotification or subject/text/html) plus "template" and "language".
    Raises TemplateProblem(field, message) — field relative to the template ref, e.g. "variables.orderId",
    "name"."""
    stored = channel.templates.get(name)
    if stored is None:
        raise TemplateProblem("name", f"channel {_channel_name(channel)} has no template {name!r}")
    return render_stored(stored, channel.type, f"of channel {_channel_name(channel)}", language, variables)


def render_stored(stored: StoredTemplate, channel_type: str, owner: str, language: str | None,
                  variables: Mapping[str, object]) -> dict[str, Any]:
    """`render_template` for a template held elsewhere than in a channel row (a NotificationRoute's
    `spec.templates`), its content checked against a channel of `channel_type`; `owner` says where the
    template is in messages ("of channel shop/alerts", "of route shop/booking-done")."""
    name = stored.name
    if stored.error is not None or stored.template is None:
        raise TemplateProblem("name", f"template {name!r} {owner} does not compile: {stored.error}")
    try:
        compiled = _compiled(stored, stored.template)
    except TemplateSyntaxError as exc:  # the operator has not checked this revision yet
        raise TemplateProblem("name", f"template {name!r} does not compile: {exc.message}") from exc
    missing = [v for v in compiled.required if v not in variables]
    if missing:
        raise TemplateProblem(f"variables.{missing[0]}",
                              f"template {name!r} needs variable{'s' if len(missing) > 1 else ''} "
                              f"{', '.join(missing)}")
    values = {**compiled.defaults, **variables}
    variant = compiled.variant(language)
    try:
        rendered = variant.render(values)
    except SecurityError as exc:
        raise TemplateProblem("name", f"template {name!r} was stopped by the sandbox: {exc}") from exc
    except UndefinedError as exc:
        raise TemplateProblem("variables", f"template {name!r}: {exc}") from exc
    except (TemplateError, TypeError, ValueError, ArithmeticError) as exc:
        raise TemplateProblem("variables", f"template {name!r} cannot be rendered with these variables: "
                                           f"{exc}") from exc
    try:
        content = Content.model_validate(rendered)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"])
        raise TemplateProblem("variables", f"template {name!r} rendered an invalid {where}: "
                                           f"{error['msg']}") from exc
    problem = content.problem_for(channel_type)
    if problem is not None:
        field, why = problem
        raise TemplateProblem("variables", f"template {name!r} rendered an invalid {field}: {why}")
    return {**content.to_k8s(), "template": name, "language": variant.language}



def request_content(channel: ChannelRecord, request: NotificationRequest) -> dict[str, Any]:
    """The outbox `content` of an API request: literal content as it is, a template rendered (with the
    request's disableNotification and pin). Raises TemplateProblem as `render_template` does."""
    ref = request.content.template
    if channel.type == "webpush":  # title and body (and url): what the webpush worker sends
        if ref is None:
            text, subject = request.content.text or "", request.content.subject
            extra: dict[str, Any] = {}
        else:
            rendered = render_template(channel, ref.name, ref.language, ref.variables)
            text, subject = rendered["text"], rendered.get("subject")
            extra = {"template": rendered["template"], "language": rendered["language"]}
        return {**webpush.notification_content(text, subject, request.content.url), **extra}
    if ref is None:
        return outbox_content(request)
    content = render_template(channel, ref.name, ref.language, ref.variables)
    if request.content.disable_notification and channel.type == "telegram":
        content["disableNotification"] = True
    if request.content.pin and channel.type == "telegram":
        content["pin"] = True
    return content
