"""API keys: who is calling and whether they may, decided once per request before any route runs.

A credential comes as ``X-API-Key: <key>`` or ``Authorization: Bearer <key>``. Configuration holds only salted
hashes (``tabserve hash-key`` prints an entry): ``TABSERVE_API_KEYS`` is a comma-separated list of
``name:scope+scope:sha256.<salt>.<digest>``, and ``TABSERVE_ADMIN_TOKEN`` (the admin credential) is such a hash
too, or, outside production mode, the token itself. A presented key is hashed with every entry's salt and compared
with ``hmac.compare_digest`` against every entry (no early exit); keys are random 256-bit tokens, so one salted
SHA-256 (about a microsecond) protects them as well as a slow password hash would, without costing every request.
Neither keys nor hashes are ever logged; a principal is known by its name.

Routes and the scope they need (``route_scope``):

- predict, feedback and Open Inference Protocol ``infer``: ``predict`` — optional unless ``TABSERVE_REQUIRE_API_KEY``
  (anonymous calls pass; a presented key must still be valid);
- ``/admin/*`` (reload): ``admin``, and disabled (404) when no admin credential is configured;
- the operations views (``/models/{name}/drift``, ``/models/{name}/coverage``, ``/operations/summary``): ``admin``
  once an admin credential is configured, open (for development) before;
- everything else (probes, metrics, model metadata, docs): no credential.

401 (with ``WWW-Authenticate``): no credential where one is needed, or one matching no key; 403: a valid key
without the scope. The rate limiter keys on the principal's name when the key is valid, else on the address, so
random keys do not buy fresh buckets. ``TABSERVE_PRODUCTION`` refuses to start with the admin routes open.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any, Final

from tabserve.config import Settings
from tabserve.errors import ConfigurationError, ForbiddenError, NotFoundError, UnauthorizedError

SCOPES: Final = frozenset({"predict", "admin"})
HASH_SCHEME: Final = "sha256"
SALT_BYTES: Final = 16
MIN_KEY_LENGTH: Final = 24
ADMIN_TOKEN_NAME: Final = "admin-token"  # noqa: S105 - the principal name of TABSERVE_ADMIN_TOKEN, not a secret
CHALLENGE: Final = 'Bearer realm="tabserve"'
INVALID_CHALLENGE: Final = 'Bearer realm="tabserve", error="invalid_token"'


@dataclass(frozen=True, slots=True)
class StoredKey:
    """One configured key: its name, scopes and salted hash (never the key)."""

    name: str
    scopes: frozenset[str]
    salt: bytes
    digest: bytes


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller a valid key identifies."""

    name: str
    scopes: frozenset[str]


INVALID: Final = Principal("", frozenset())
"""A credential was presented but matches no key (401 wherever a credential counts)."""


def new_key() -> str:
    """A fresh random key (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def _digest(salt: bytes, key: str) -> bytes:
    return hashlib.sha256(salt + key.encode("utf-8")).digest()


def hash_key(key: str, salt: bytes | None = None) -> str:
    """``sha256.<salt hex>.<digest hex>`` of ``key`` (a fresh random salt unless given)."""
    if len(key) < MIN_KEY_LENGTH:
        raise ConfigurationError(f"an API key needs at least {MIN_KEY_LENGTH} characters (use a generated one)")
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    return f"{HASH_SCHEME}.{salt.hex()}.{_digest(salt, key).hex()}"


def key_entry(name: str, scopes: frozenset[str], key: str) -> str:
    """The ``TABSERVE_API_KEYS`` entry for ``key``: ``name:scope+scope:hash``."""
    stored = StoredKey(name, scopes, b"", b"")
    _check_entry(stored, name)
    return f"{name}:{'+'.join(sorted(scopes))}:{hash_key(key)}"


def _parse_hash(text: str, where: str) -> tuple[bytes, bytes]:
    scheme, _, rest = text.partition(".")
    salt_hex, _, digest_hex = rest.partition(".")
    try:
        salt, digest = bytes.fromhex(salt_hex), bytes.fromhex(digest_hex)
    except ValueError:
        salt = digest = b""
    if scheme != HASH_SCHEME or len(salt) < 8 or len(digest) != hashlib.sha256().digest_size:
        raise ConfigurationError(f"{where}: not a key hash from `tabserve hash-key` (sha256.<salt>.<digest>)")
    return salt, digest


def _check_entry(stored: StoredKey, where: str) -> None:
    if not stored.name or not stored.name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ConfigurationError(f"{where}: a key name is letters, digits, '-', '_' or '.'")
    unknown = stored.scopes - SCOPES
    if not stored.scopes or unknown:
        raise ConfigurationError(f"{where}: scopes are some of {sorted(SCOPES)}, got {sorted(stored.scopes)}")


def parse_keys(text: str) -> list[StoredKey]:
    """``TABSERVE_API_KEYS`` -> the stored keys (ConfigurationError names the bad entry, never its hash)."""
    keys: list[StoredKey] = []
    for number, item in enumerate((part.strip() for part in text.split(",")), start=1):
        if not item:
            continue
        where = f"TABSERVE_API_KEYS entry {number}"
        name, _, rest = item.partition(":")
        scopes, _, hashed = rest.partition(":")
        salt, digest = _parse_hash(hashed, where)
        stored = StoredKey(name.strip(), frozenset(s for s in scopes.split("+") if s), salt, digest)
        _check_entry(stored, where)
        if any(k.name == stored.name for k in keys):
            raise ConfigurationError(f"{where}: the name {stored.name!r} is used twice")
        keys.append(stored)
    return keys


def route_scope(method: str, path: str) -> tuple[str, str] | None:
    """(scope, kind) a route needs: kind ``predict``, ``admin`` or ``operations``; None = no credential. Only the
    methods the routes serve: any other gets the router's 405, whoever asks."""
    parts = path.split("/")
    action = parts[3] if len(parts) == 4 and parts[1] == "models" and parts[2] else ""  # /models/{name}/<action>
    if method == "POST":
        if path in {"/predict", "/feedback"} or action == "predict":
            return "predict", "predict"
        if path.startswith("/v2/models/") and path.endswith("/infer"):
            return "predict", "predict"
        if path.startswith("/admin/"):
            return "admin", "admin"
    elif method == "GET" and (action in {"drift", "coverage"} or path == "/operations/summary"):
        return "admin", "operations"
    return None


class Authenticator:
    """The configured keys and the rules above; one per app."""

    def __init__(self, keys: list[StoredKey], *, require_predict_key: bool = False) -> None:
        self.keys = keys
        self.require_predict_key = require_predict_key
        self.admin_configured = any("admin" in k.scopes for k in keys)

    @classmethod
    def from_settings(cls, settings: Settings) -> Authenticator:
        keys = parse_keys(settings.api_keys.get_secret_value())
        token = settings.admin_token.get_secret_value()
        if token:
            if any(k.name == ADMIN_TOKEN_NAME for k in keys):
                raise ConfigurationError(f"TABSERVE_API_KEYS: the name {ADMIN_TOKEN_NAME!r} is reserved")
            if token.startswith(HASH_SCHEME + "."):
                salt, digest = _parse_hash(token, "TABSERVE_ADMIN_TOKEN")
            else:  # a token in plain text (refused in production): held as a hash from here on
                salt = secrets.token_bytes(SALT_BYTES)
                digest = _digest(salt, token)
            keys.append(StoredKey(ADMIN_TOKEN_NAME, frozenset({"admin"}), salt, digest))
        return cls(keys, require_predict_key=settings.require_api_key)

    def identify(self, authorization: str | None, api_key: str | None) -> Principal | None:
        """The caller, ``INVALID`` for a credential matching no key, None when none was presented."""
        if authorization is not None:
            scheme, _, presented = authorization.strip().partition(" ")
            if scheme.lower() != "bearer" or not presented.strip():
                return INVALID
            presented = presented.strip()
        elif api_key is not None:
            presented = api_key.strip()
        else:
            return None
        found: StoredKey | None = None
        for stored in self.keys:  # every entry, no early exit
            if hmac.compare_digest(_digest(stored.salt, presented), stored.digest):
                found = stored
        return INVALID if found is None else Principal(found.name, found.scopes)

    def authorize(self, method: str, path: str, principal: Principal | None) -> None:
        """Raise 401/403 (or 404 for a disabled admin API) unless ``principal`` may call this route."""
        rule = route_scope(method, path)
        if rule is None:
            return
        scope, kind = rule
        if kind == "admin" and not self.admin_configured:
            raise NotFoundError("the admin API is disabled (set TABSERVE_ADMIN_TOKEN or an admin-scoped API key)")
        if principal is INVALID:
            raise UnauthorizedError("the API key matches no configured key", challenge=INVALID_CHALLENGE)
        required = kind == "admin" or (kind == "operations" and self.admin_configured)
        required = required or (kind == "predict" and self.require_predict_key)
        if principal is None:
            if required:
                raise UnauthorizedError(f"this route needs an API key with the {scope!r} scope", challenge=CHALLENGE)
            return
        if required and scope not in principal.scopes:
            raise ForbiddenError(f"the key {principal.name!r} does not have the {scope!r} scope")


def production_problems(settings: Settings) -> list[str]:
    """Why ``TABSERVE_PRODUCTION=true`` refuses to start with these settings (empty: it may start)."""
    problems: list[str] = []
    token = settings.admin_token.get_secret_value()
    admin_key = any("admin" in k.scopes for k in parse_keys(settings.api_keys.get_secret_value()))
    if not token and not admin_key:
        problems.append(
            "the admin routes are open: set TABSERVE_ADMIN_TOKEN or an admin-scoped key in TABSERVE_API_KEYS "
            "(`tabserve hash-key --scopes admin`)"
        )
    if token and not token.startswith(HASH_SCHEME + "."):
        problems.append("TABSERVE_ADMIN_TOKEN is a token in plain text: store its hash (`tabserve hash-key`)")
    return problems


def check_production(settings: Settings) -> None:
    """ConfigurationError when production mode is on and the settings leave the service open."""
    if settings.production:
        problems = production_problems(settings)
        if problems:
            raise ConfigurationError("TABSERVE_PRODUCTION=true refuses to start: " + "; ".join(problems))


SECURITY_SCHEMES: Final = {
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "An API key"},
    "bearer": {"type": "http", "scheme": "bearer", "description": "An API key or the admin token as a bearer token"},
}


def document_security(schema: dict[str, Any], auth: Authenticator) -> None:
    """Declare the security schemes and, per operation, the credential it needs as configured (optional = ``{}``
    among the alternatives), so the document says what ``authorize`` does (in place)."""
    schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
    any_key: list[dict[str, list[str]]] = [{"apiKey": []}, {"bearer": []}]
    for path, item in schema.get("paths", {}).items():
        for method, operation in item.items():
            rule = route_scope(method.upper(), path) if isinstance(operation, dict) else None
            if rule is None:
                continue
            _, kind = rule
            if kind == "admin" or (kind == "operations" and auth.admin_configured):
                operation["security"] = any_key
            elif kind == "predict":
                operation["security"] = any_key if auth.require_predict_key else [{}, *any_key]
