"""Audit the resolved dependencies against the advisories PyPI publishes.

    python -m clarion_dev.audit [--waivers docs/audit-waivers.toml] [--json]

Every distribution installed in this environment (the dependency set pip resolved for `.[dev]`,
less Clarion itself) is looked up in PyPI's JSON API, the source pip-audit's default service reads:
the `vulnerabilities` of a project's page are the advisories (PyPA advisory database, OSV) that
affect its newest release. The registry reachable here does not serve the per-release pages
(`/pypi/NAME/VERSION/json` answers 404), which is why pip-audit reports every package as "not found"
and audits nothing. So this audit is exact for a distribution at its newest release, and for one
held behind it the advisories of the newest release that have no fix yet (they affect every
version) still count; what was fixed between the installed and the newest release cannot be seen,
so such a distribution must be waived by name, with the reason it is held back.

The exit status is 1 when an advisory is not waived, a held-back distribution is not waived, a
waiver names nothing that needs it (stale waivers hide nothing but mislead), or PyPI cannot be
asked: an audit that could not run is not a pass.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.metadata import Distribution, distributions
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

PYPI = "https://pypi.org/pypi"
DEFAULT_WAIVERS = Path(__file__).resolve().parents[2] / "docs" / "audit-waivers.toml"
#: Distributions that are this repository, not something pip resolved from PyPI.
OWN = frozenset({"clarion"})


def canonical(name: str) -> str:
    """PEP 503 normalised name."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Advisory:
    id: str
    aliases: tuple[str, ...]
    fixed_in: tuple[str, ...]
    summary: str

    @classmethod
    def from_pypi(cls, raw: Mapping[str, Any]) -> Advisory:
        return cls(id=str(raw["id"]), aliases=tuple(raw.get("aliases") or ()),
                   fixed_in=tuple(raw.get("fixed_in") or ()),
                   summary=str(raw.get("summary") or raw.get("details") or "")[:160])

    def names(self) -> set[str]:
        return {self.id, *self.aliases}


@dataclass
class Finding:
    name: str
    installed: str
    latest: str
    advisories: list[Advisory] = field(default_factory=list)

    @property
    def behind(self) -> bool:
        try:
            return Version(self.installed) < Version(self.latest)
        except InvalidVersion:
            return self.installed != self.latest


@dataclass(frozen=True)
class Waivers:
    advisories: Mapping[str, str]
    behind: Mapping[str, str]

    @classmethod
    def load(cls, path: Path) -> Waivers:
        if not path.exists():
            return cls({}, {})
        data = tomllib.loads(path.read_text())
        return cls(advisories=dict(data.get("advisories", {})),
                   behind={canonical(k): v for k, v in data.get("behind-latest", {}).items()})


def installed() -> dict[str, str]:
    """Canonical name → version of every distribution in this environment, less this repository."""
    found: dict[str, str] = {}
    for dist in distributions():
        name = canonical(dist.metadata["Name"] or "")
        if name and name not in OWN and not _editable(dist):
            found[name] = dist.version
    return found


def _editable(dist: Distribution) -> bool:
    raw = dist.read_text("direct_url.json")
    return bool(raw and json.loads(raw).get("dir_info", {}).get("editable"))


def lookup(name: str, version: str, *, index: str = PYPI, timeout: float = 30.0) -> Finding:
    if not index.startswith(("https://", "http://")):
        raise ValueError(f"the index must be an http(s) URL, not {index!r}")
    with urllib.request.urlopen(f"{index}/{name}/json", timeout=timeout) as response:  # noqa: S310
        page = json.load(response)
    latest = str(page["info"]["version"])
    finding = Finding(name, version, latest)
    for raw in page.get("vulnerabilities") or ():
        advisory = Advisory.from_pypi(raw)
        # At the newest release every listed advisory applies; behind it, only those with no fix
        # are certain to (a fix released later than the installed version would not help it).
        if not finding.behind or not advisory.fixed_in or _fixed_after(version, advisory.fixed_in):
            finding.advisories.append(advisory)
    return finding


def _fixed_after(version: str, fixed_in: Iterable[str]) -> bool:
    try:
        mine = Version(version)
        return all(Version(fix) > mine for fix in fixed_in)
    except InvalidVersion:
        return True


def audit(packages: Mapping[str, str], waivers: Waivers, *, index: str = PYPI,
          workers: int = 8) -> tuple[list[str], list[str]]:
    """(problems, notes): problems fail the audit, notes explain what was waived."""
    with ThreadPoolExecutor(workers) as pool:
        findings = list(pool.map(lambda item: lookup(*item, index=index), sorted(packages.items())))
    problems: list[str] = []
    notes: list[str] = []
    used_advisories: set[str] = set()
    used_behind: set[str] = set()
    for finding in findings:
        for advisory in finding.advisories:
            waived = advisory.names() & waivers.advisories.keys()
            if waived:
                used_advisories |= waived
                notes.append(f"{finding.name} {finding.installed}: {advisory.id} waived: "
                             f"{waivers.advisories[min(waived)]}")
            else:
                fix = ", ".join(advisory.fixed_in) or "no fix released"
                problems.append(f"{finding.name} {finding.installed}: {advisory.id} "
                                f"({', '.join(advisory.aliases)}; fixed in: {fix}) {advisory.summary}")
        if finding.behind:
            if finding.name in waivers.behind:
                used_behind.add(finding.name)
                notes.append(f"{finding.name} {finding.installed} is behind {finding.latest}, waived: "
                             f"{waivers.behind[finding.name]}")
            else:
                problems.append(f"{finding.name} {finding.installed} is behind {finding.latest}: "
                                "advisories fixed in between cannot be seen here; "
                                "upgrade it or waive it with the reason")
    for stale in sorted(waivers.advisories.keys() - used_advisories):
        problems.append(f"waiver for advisory {stale} matches nothing installed: remove it")
    for stale in sorted(waivers.behind.keys() - used_behind):
        problems.append(f"waiver for {stale} being behind its newest release matches nothing: remove it")
    return problems, notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clarion_dev.audit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--waivers", type=Path, default=DEFAULT_WAIVERS)
    parser.add_argument("--index", default=PYPI, help="PyPI JSON API root (default: %(default)s)")
    args = parser.parse_args(argv)
    packages = installed()
    try:
        problems, notes = audit(packages, Waivers.load(args.waivers), index=args.index)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"audit: could not ask PyPI ({exc}); nothing was audited", file=sys.stderr)
        return 1
    for note in notes:
        print(f"audit: {note}")
    for problem in problems:
        print(f"audit: FAIL {problem}", file=sys.stderr)
    verdict = "no known vulnerabilities" if not problems else f"{len(problems)} problem(s)"
    print(f"audit: {len(packages)} distributions audited against PyPI advisories: {verdict}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
