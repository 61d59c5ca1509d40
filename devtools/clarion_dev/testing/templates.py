"""Channel templates as the operator stores them in the channel row, for tests that write rows directly."""

from __future__ import annotations

from typing import Any

from clarion.db.channels import StoredTemplate
from clarion.models.channel import ChannelTemplate
from clarion.templates import template_problem


def stored_templates(*templates: dict[str, Any]) -> list[dict[str, Any]]:
    """`channels.templates` for these `spec.templates` entries, each compiled as the operator does."""
    parsed = [ChannelTemplate.model_validate(t) for t in templates]
    return [StoredTemplate.of(t, template_problem(t)).to_json() for t in parsed]
