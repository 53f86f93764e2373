"""``make audit``: pip-audit over the locked requirements, failing on a known vulnerability not in the ignore file.

The lock files (``requirements/serve.txt``, ``requirements/dev.txt``) are audited as locked (``--require-hashes
--disable-pip``: nothing is resolved or installed; environment markers are evaluated for this machine). Each
finding must be fixed or listed in ``deploy/audit-ignore.toml`` with an id, the package, the date it was added, a
reason and an expiry date; an entry without them, or past its expiry, fails the audit as well.

The data source is probed first with a known-vulnerable release (``requests 2.19.0``, CVE-2018-18074): when no
source answers with vulnerability data the audit prints one ``SKIP`` line and exits 0 (``AUDIT_REQUIRED=1`` makes
that a failure), so an offline machine or a mirror without the per-release JSON API cannot pass for a clean audit.
Exit codes: 0 clean (or skipped), 1 unignored vulnerability or unaudited package, 2 bad ignore file or tool error.
"""

# ruff: noqa: T201 - a command-line tool: it reports on stdout

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
LOCKS = (REPO / "requirements" / "serve.txt", REPO / "requirements" / "dev.txt")
IGNORE_FILE = REPO / "deploy" / "audit-ignore.toml"
PROBE_TIMEOUT_S = 5.0
REPORT_OPTIONS = ("-f", "json", "--aliases", "on", "--progress-spinner", "off")
#: a release with a known vulnerability: a data source that reports none for it is not usable
CANARY = ("requests", "2.19.0")


class AuditError(Exception):
    """The ignore file or the tool's output is unusable (exit code 2)."""


@dataclass(frozen=True)
class Ignore:
    """One accepted vulnerability: matched by id or alias, for one package."""

    id: str
    package: str
    added: dt.date
    expires: dt.date
    reason: str


@dataclass(frozen=True)
class Finding:
    """One vulnerability of one locked package."""

    lock: str
    package: str
    version: str
    id: str
    aliases: tuple[str, ...]
    fix_versions: tuple[str, ...]

    def ids(self) -> set[str]:
        return {self.id, *self.aliases}


@dataclass(frozen=True)
class Verdict:
    """What the audit found: unignored findings and unaudited packages fail it."""

    failing: list[Finding]
    ignored: list[tuple[Finding, Ignore]]
    unaudited: list[tuple[str, str, str]]  # (lock, package, reason)
    stale: list[Ignore]  # ignore entries that matched nothing: remove them
    audited: dict[str, int]  # lock -> packages audited

    @property
    def ok(self) -> bool:
        return not self.failing and not self.unaudited


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def load_ignores(path: Path, today: dt.date) -> list[Ignore]:
    """Read and check the ignore file: every entry dated, reasoned and not expired."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise AuditError(f"{path}: {exc}") from exc
    entries = data.get("ignore", [])
    if not isinstance(entries, list):
        raise AuditError(f"{path}: 'ignore' must be an array of tables ([[ignore]])")
    out: list[Ignore] = []
    for number, entry in enumerate(entries, start=1):
        where = f"{path.name} entry {number}"
        if not isinstance(entry, dict):
            raise AuditError(f"{where}: not a table")
        for key in ("id", "package", "reason"):
            if not isinstance(entry.get(key), str) or not entry[key].strip():
                raise AuditError(f"{where}: '{key}' is required (a non-empty string)")
        for key in ("added", "expires"):
            if type(entry.get(key)) is not dt.date:
                raise AuditError(f"{where}: '{key}' is required (a TOML date such as 2026-12-06)")
        item = Ignore(entry["id"], _canonical(entry["package"]), entry["added"], entry["expires"], entry["reason"])
        if len(item.reason.split()) < 4:
            raise AuditError(f"{where}: the reason must say why the vulnerability does not apply or cannot be fixed")
        if item.expires < item.added:
            raise AuditError(f"{where}: expires ({item.expires}) is before added ({item.added})")
        if item.expires < today:
            raise AuditError(f"{where}: {item.id} expired on {item.expires}: fix it or re-decide and re-date it")
        out.append(item)
    return out


def parse_report(lock: str, text: str) -> tuple[list[Finding], list[tuple[str, str, str]], int]:
    """pip-audit's ``-f json`` output -> (findings, skipped packages, audited count)."""
    try:
        report = json.loads(text)
        dependencies = report["dependencies"]
    except (ValueError, KeyError, TypeError) as exc:
        raise AuditError(f"{lock}: pip-audit printed no JSON report ({exc})") from exc
    findings: list[Finding] = []
    skipped: list[tuple[str, str, str]] = []
    audited = 0
    for dep in dependencies:
        name = _canonical(str(dep["name"]))
        if "skip_reason" in dep:
            skipped.append((lock, name, str(dep["skip_reason"])))
            continue
        audited += 1
        for vuln in dep.get("vulns", []):
            findings.append(
                Finding(
                    lock=lock,
                    package=name,
                    version=str(dep["version"]),
                    id=str(vuln["id"]),
                    aliases=tuple(str(a) for a in vuln.get("aliases", [])),
                    fix_versions=tuple(str(v) for v in vuln.get("fix_versions", [])),
                )
            )
    return findings, skipped, audited


def judge(reports: dict[str, str], ignores: Sequence[Ignore]) -> Verdict:
    """Match every finding against the ignore entries (same package, id or alias)."""
    failing: list[Finding] = []
    ignored: list[tuple[Finding, Ignore]] = []
    unaudited: list[tuple[str, str, str]] = []
    audited: dict[str, int] = {}
    used: set[Ignore] = set()
    for lock, text in reports.items():
        findings, skipped, count = parse_report(lock, text)
        unaudited.extend(skipped)
        audited[lock] = count
        for finding in findings:
            match = next((i for i in ignores if i.package == finding.package and i.id in finding.ids()), None)
            if match is None:
                failing.append(finding)
            else:
                ignored.append((finding, match))
                used.add(match)
    return Verdict(failing, ignored, unaudited, [i for i in ignores if i not in used], audited)


def _fetch(url: str, body: bytes | None = None) -> Any:
    """GET (or POST ``body`` as JSON) an http(s) URL and decode its JSON answer."""
    if not url.startswith(("https://", "http://")):
        raise ValueError(f"not an http(s) URL: {url}")
    headers = {"Content-Type": "application/json"} if body is not None else {}
    request = urllib.request.Request(url, data=body, headers=headers)  # noqa: S310 - scheme checked above
    with urllib.request.urlopen(request, timeout=PROBE_TIMEOUT_S) as response:  # noqa: S310 - scheme checked above
        return json.loads(response.read())


def probe_pypi(base: str = "https://pypi.org") -> str | None:
    """None if PyPI's per-release JSON API answers with vulnerability data, else why not."""
    name, version = CANARY
    try:
        data = _fetch(f"{base}/pypi/{name}/{version}/json")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
    vulns = data.get("vulnerabilities") if isinstance(data, dict) else None
    return None if vulns else f"no vulnerability data for {name} {version}"


def probe_osv(base: str = "https://api.osv.dev") -> str | None:
    """None if OSV answers with vulnerability data, else why not."""
    name, version = CANARY
    body = json.dumps({"package": {"name": name, "ecosystem": "PyPI"}, "version": version}).encode()
    try:
        data = _fetch(f"{base}/v1/query", body)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
    vulns = data.get("vulns") if isinstance(data, dict) else None
    return None if vulns else f"no vulnerability data for {name} {version}"


PROBES: dict[str, Callable[[], str | None]] = {"pypi": probe_pypi, "osv": probe_osv}


def pick_service(probes: dict[str, Callable[[], str | None]]) -> tuple[str | None, dict[str, str]]:
    """The first reachable service, and why each unreachable one was passed over."""
    why: dict[str, str] = {}
    for service, probe in probes.items():
        reason = probe()
        if reason is None:
            return service, why
        why[service] = reason
    return None, why


def run_pip_audit(command: Sequence[str], service: str, locks: Sequence[Path]) -> dict[str, str]:
    """One pip-audit per lock file, in parallel; their JSON reports by lock file name."""
    procs = {
        lock.name: subprocess.Popen(  # noqa: S603 - the argument list is fixed; lock paths come from the caller
            [*command, "-r", str(lock), "--require-hashes", "--disable-pip", "-s", service, *REPORT_OPTIONS],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for lock in locks
    }
    reports: dict[str, str] = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=600)
        if proc.returncode not in (0, 1):  # 1 = vulnerabilities found (the JSON report says which)
            raise AuditError(f"{name}: pip-audit exited {proc.returncode}: {err.strip()[-500:]}")
        reports[name] = out
    return reports


def report(verdict: Verdict, service: str) -> None:
    counts = ", ".join(f"{lock} {n} packages" for lock, n in verdict.audited.items())
    print(f"audit: {service}: {counts}; {len(verdict.failing)} vulnerable, {len(verdict.ignored)} ignored")
    for f in verdict.failing:
        fix = ", ".join(f.fix_versions) or "no fixed release"
        print(f"audit: FAIL {f.lock}: {f.package} {f.version} {f.id} {list(f.aliases)} (fixed in: {fix})")
    for lock, package, reason in verdict.unaudited:
        print(f"audit: FAIL {lock}: {package} not audited: {reason}")
    for f, i in verdict.ignored:
        print(f"audit: ignored {f.package} {f.version} {f.id} until {i.expires} (added {i.added}): {i.reason}")
    for i in verdict.stale:
        print(f"audit: note: ignore entry {i.id} ({i.package}) matches nothing any more: remove it")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ignore-file", type=Path, default=IGNORE_FILE)
    parser.add_argument("--pip-audit", default=str(Path(sys.executable).with_name("pip-audit")))
    parser.add_argument("--service", choices=sorted(PROBES), help="skip the probe and use this data source")
    parser.add_argument("locks", nargs="*", type=Path, default=list(LOCKS))
    args = parser.parse_args(argv)
    try:
        ignores = load_ignores(args.ignore_file, dt.datetime.now(dt.UTC).date())
        service, why = (args.service, {}) if args.service else pick_service(PROBES)
        if service is None:
            reasons = "; ".join(f"{name}: {text}" for name, text in why.items())
            print(f"audit: SKIP - no vulnerability data source reachable ({reasons})")
            return 1 if os.environ.get("AUDIT_REQUIRED") == "1" else 0
        verdict = judge(run_pip_audit([args.pip_audit], service, args.locks), ignores)
    except AuditError as exc:
        print(f"audit: ERROR {exc}")
        return 2
    report(verdict, service)
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    sys.exit(main())
