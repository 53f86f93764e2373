"""``make audit`` (deploy/audit.py): ignore-file rules, verdicts on pip-audit's own JSON, the data-source probe
against a real local HTTP server, and the command end to end with a stand-in pip-audit."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import ClassVar

import pytest
from packaging.version import Version
from pip_audit._format import JsonFormat  # the tool's own formatter: the report shape is the tool's, not ours
from pip_audit._service.interface import ResolvedDependency, SkippedDependency, VulnerabilityResult

REPO = Path(__file__).resolve().parents[1]
TODAY = dt.date(2026, 12, 6)


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("audit", REPO / "deploy" / "audit.py")
    if spec is None or spec.loader is None:
        raise ImportError("deploy/audit.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["audit"] = module  # dataclasses resolve their module
    spec.loader.exec_module(module)
    return module


audit = _load()

ENTRY = """
[[ignore]]
id = "CVE-2099-0001"
package = "Example_Pkg"
added = 2026-12-01
expires = 2027-01-01
reason = "the vulnerable parser is never called by tabserve"
"""


def _report() -> str:
    vulnerable = ResolvedDependency("example-pkg", Version("1.0"))
    other = ResolvedDependency("other", Version("2.0"))
    vuln = VulnerabilityResult.create(["GHSA-aaaa-bbbb-cccc", "CVE-2099-0001"], "bad", [Version("1.1")], None)
    return JsonFormat(output_desc=False, output_aliases=True).format({vulnerable: [vuln], other: []}, [])


def test_the_repository_ignore_file_is_valid() -> None:
    audit.load_ignores(audit.IGNORE_FILE, dt.datetime.now(dt.UTC).date())


def test_ignore_entries_need_dates_and_a_reason(tmp_path: Path) -> None:
    path = tmp_path / "ignore.toml"
    path.write_text(ENTRY)
    (item,) = audit.load_ignores(path, TODAY)
    assert (item.package, item.expires) == ("example-pkg", dt.date(2027, 1, 1))
    for broken, message in [
        (ENTRY.replace('reason = "the vulnerable parser is never called by tabserve"', ""), "'reason' is required"),
        (ENTRY.replace('reason = "the vulnerable parser is never called by tabserve"', 'reason = "ok"'), "must say"),
        (ENTRY.replace("added = 2026-12-01", 'added = "yesterday"'), "'added' is required"),
        (ENTRY.replace("expires = 2027-01-01", ""), "'expires' is required"),
        (ENTRY.replace("expires = 2027-01-01", "expires = 2026-11-01"), "before added"),
    ]:
        path.write_text(broken)
        with pytest.raises(audit.AuditError, match=message):
            audit.load_ignores(path, TODAY)
    path.write_text(ENTRY)
    with pytest.raises(audit.AuditError, match="expired on 2027-01-01"):
        audit.load_ignores(path, dt.date(2027, 1, 2))


def test_a_vulnerability_fails_unless_ignored_for_that_package(tmp_path: Path) -> None:
    verdict = audit.judge({"serve.txt": _report()}, [])
    assert not verdict.ok
    (finding,) = verdict.failing
    assert (finding.package, finding.version, finding.fix_versions) == ("example-pkg", "1.0", ("1.1",))
    assert verdict.audited == {"serve.txt": 2}

    path = tmp_path / "ignore.toml"
    path.write_text(ENTRY)  # matched by an alias, package name canonicalised
    verdict = audit.judge({"serve.txt": _report()}, audit.load_ignores(path, TODAY))
    assert verdict.ok and len(verdict.ignored) == 1 and not verdict.stale

    path.write_text(ENTRY.replace("Example_Pkg", "other"))  # same id, other package: does not cover it
    verdict = audit.judge({"serve.txt": _report()}, audit.load_ignores(path, TODAY))
    assert not verdict.ok and len(verdict.stale) == 1


def test_an_unaudited_package_fails_the_audit() -> None:
    skipped = SkippedDependency("private-pkg", "Dependency not found on PyPI and could not be audited")
    text = JsonFormat(output_desc=False, output_aliases=True).format({skipped: []}, [])
    verdict = audit.judge({"dev.txt": text}, [])
    assert not verdict.ok and verdict.unaudited[0][1] == "private-pkg"
    with pytest.raises(audit.AuditError, match="no JSON report"):
        audit.judge({"dev.txt": "Traceback ..."}, [])


class _Handler(BaseHTTPRequestHandler):
    answers: ClassVar[dict[str, tuple[int, object]]] = {}

    def do_GET(self) -> None:
        status, body = self.answers.get(self.path, (404, {"message": "Not Found"}))
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_the_probe_wants_vulnerability_data_for_the_canary(server: str) -> None:
    path = "/pypi/requests/2.19.0/json"
    _Handler.answers = {}
    assert "Not Found" in audit.probe_pypi(server)  # a mirror without the per-release API
    _Handler.answers = {path: (200, {"info": {}, "vulnerabilities": []})}
    assert "no vulnerability data" in audit.probe_pypi(server)
    _Handler.answers = {path: (200, {"info": {}, "vulnerabilities": [{"id": "PYSEC-2018-28"}]})}
    assert audit.probe_pypi(server) is None
    assert audit.probe_pypi("http://127.0.0.1:9") is not None  # nothing listens on the discard port


def test_no_data_source_prints_one_skip_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(audit, "PROBES", {"pypi": lambda: "HTTPError: Not Found", "osv": lambda: "no DNS"})
    monkeypatch.delenv("AUDIT_REQUIRED", raising=False)
    assert audit.main([]) == 0
    assert capsys.readouterr().out == (
        "audit: SKIP - no vulnerability data source reachable (pypi: HTTPError: Not Found; osv: no DNS)\n"
    )
    monkeypatch.setenv("AUDIT_REQUIRED", "1")
    assert audit.main([]) == 1


def test_the_command_runs_pip_audit_per_lock_and_fails_on_a_finding(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = tmp_path / "pip-audit"  # stands in for the tool: checks its arguments, prints a report, exits 1
    (tmp_path / "report.json").write_text(_report())
    fake.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        "args = sys.argv[1:]\n"
        "assert {'--require-hashes', '--disable-pip'} <= set(args) and args[args.index('-s') + 1] == 'osv', args\n"
        f"print(open({str(tmp_path / 'report.json')!r}).read())\n"
        "sys.exit(1)\n"
    )
    fake.chmod(0o755)
    lock = tmp_path / "serve.txt"
    lock.write_text("")
    empty = tmp_path / "none.toml"
    empty.write_text("")
    argv = ["--pip-audit", str(fake), "--service", "osv", "--ignore-file", str(empty), str(lock)]
    assert audit.main(argv) == 1
    out = capsys.readouterr().out
    assert "audit: FAIL serve.txt: example-pkg 1.0" in out and "(fixed in: 1.1)" in out
    accepted = tmp_path / "accepted.toml"
    accepted.write_text(ENTRY.replace("expires = 2027-01-01", f"expires = {dt.date.today() + dt.timedelta(days=30)}"))
    assert audit.main([*argv[:4], "--ignore-file", str(accepted), str(lock)]) == 0
    assert "audit: ignored example-pkg 1.0" in capsys.readouterr().out
