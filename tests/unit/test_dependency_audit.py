"""The dependency audit (clarion_dev.audit) against a loopback server shaped like PyPI's JSON API."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from clarion_dev import audit

pytestmark = pytest.mark.unit

ADVISORY = {"id": "PYSEC-2099-1", "aliases": ["CVE-2099-0001", "GHSA-aaaa-bbbb-cccc"],
            "fixed_in": ["2.0.1"], "summary": "remote code execution in the parser"}
UNFIXED = {"id": "GHSA-zzzz-yyyy-xxxx", "aliases": ["CVE-2099-0002"], "fixed_in": [],
           "summary": "timing side channel"}
PAGES: dict[str, dict[str, Any]] = {
    "clean": {"info": {"version": "1.0.0"}, "vulnerabilities": []},
    "vulnerable": {"info": {"version": "2.0.0"}, "vulnerabilities": [ADVISORY]},
    "unfixed": {"info": {"version": "3.0.0"}, "vulnerabilities": [UNFIXED]},
}


class _PyPI(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        parts = self.path.strip("/").split("/")
        page = PAGES.get(parts[1]) if len(parts) == 3 and parts[2] == "json" else None
        body = json.dumps(page or {"message": "Not Found"}).encode()
        self.send_response(200 if page else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def index() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _PyPI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/pypi"
    finally:
        server.shutdown()
        server.server_close()


NONE = audit.Waivers({}, {})


def test_a_clean_environment_passes(index: str) -> None:
    problems, notes = audit.audit({"clean": "1.0.0"}, NONE, index=index)
    assert (problems, notes) == ([], [])


def test_an_advisory_on_the_installed_release_fails_with_its_ids_and_fix(index: str) -> None:
    problems, _ = audit.audit({"clean": "1.0.0", "vulnerable": "2.0.0"}, NONE, index=index)
    assert len(problems) == 1
    assert "vulnerable 2.0.0: PYSEC-2099-1" in problems[0]
    assert "CVE-2099-0001" in problems[0] and "fixed in: 2.0.1" in problems[0]


def test_a_waiver_by_alias_turns_the_advisory_into_a_note_with_its_reason(index: str) -> None:
    waivers = audit.Waivers({"CVE-2099-0001": "we never call the parser"}, {})
    problems, notes = audit.audit({"vulnerable": "2.0.0"}, waivers, index=index)
    assert problems == []
    assert notes == ["vulnerable 2.0.0: PYSEC-2099-1 waived: we never call the parser"]


def test_a_release_behind_the_newest_fails_unless_waived_and_unfixed_advisories_still_count(
        index: str) -> None:
    problems, _ = audit.audit({"clean": "0.9.0"}, NONE, index=index)
    assert problems == ["clean 0.9.0 is behind 1.0.0: advisories fixed in between cannot be seen here; "
                        "upgrade it or waive it with the reason"]
    held = audit.Waivers({}, {"unfixed": "held back by a dependant"})
    problems, notes = audit.audit({"unfixed": "2.5.0"}, held, index=index)
    assert len(problems) == 1 and "GHSA-zzzz-yyyy-xxxx" in problems[0] and "no fix released" in problems[0]
    assert notes == ["unfixed 2.5.0 is behind 3.0.0, waived: held back by a dependant"]


def test_stale_waivers_fail(index: str) -> None:
    waivers = audit.Waivers({"CVE-1999-0001": "old"}, {"clean": "old"})
    problems, _ = audit.audit({"clean": "1.0.0"}, waivers, index=index)
    assert problems == ["waiver for advisory CVE-1999-0001 matches nothing installed: remove it",
                        "waiver for clean being behind its newest release matches nothing: remove it"]


def test_an_index_that_cannot_be_asked_fails_the_run(index: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    # Every page of this index answers 404: an audit that learnt nothing must not pass.
    assert audit.main(["--index", f"{index}-nowhere", "--waivers", str(tmp_path / "none.toml")]) == 1
    assert "nothing was audited" in capsys.readouterr().err


def test_the_waivers_file_parses_and_names_canonical_distributions() -> None:
    waivers = audit.Waivers.load(audit.DEFAULT_WAIVERS)
    assert all(name == audit.canonical(name) for name in waivers.behind)
    assert all(reason.strip() for reason in [*waivers.behind.values(), *waivers.advisories.values()])
