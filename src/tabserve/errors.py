"""The one exception tree of tabserve. No web imports: the API layer maps these to responses.

TabserveError                     status 500 unless a child says otherwise
├── ArtifactError                 a model folder cannot be trusted or read
│   ├── IntegrityError            a file's sha256 differs from the manifest, or a file is missing
│   └── ManifestError             manifest.json is not valid
├── ModelNotFoundError (404)      unknown model name or version
├── ModelUnavailableError (503)   known model that cannot serve right now
├── RequestValidationError (422)  the request's content is wrong; carries one FieldError per problem
├── BadRequestError (400)         malformed JSON and the like
├── PayloadTooLargeError (413)    body or batch over a configured limit
├── UnsupportedMediaTypeError (415)
├── OverloadedError (503)         admission control refused the request (Retry-After)
├── RateLimitedError (429)
├── NotFoundError (404)           e.g. feedback for an unknown request id
├── ConflictError (409)           e.g. a second, different feedback answer
├── UnauthorizedError (401)      no credential where one is needed, or one that matches no key (WWW-Authenticate)
├── ForbiddenError (403)         a valid key without the scope the route needs
├── ConfigurationError           settings that cannot work (e.g. production mode with the admin routes open)
├── StoreError                    the prediction log cannot be written (spill, replay)
├── ScoreInputError               a file to score cannot be read, or its columns do not fit the model
└── BuildError                   ``tabserve build`` refuses its input (names the column, row or file)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem with one field of a request: where it is, what is wrong, a machine-readable code."""

    loc: tuple[str | int, ...]
    message: str
    code: str
    context: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"loc": list(self.loc), "field": self.field, "code": self.code}
        body["message"] = self.message
        if self.context:
            body["context"] = self.context
        return body

    @property
    def field(self) -> str:
        """The dotted name of the field, e.g. ``instances.3.engine_size_l``."""
        return ".".join(str(part) for part in self.loc)


class TabserveError(Exception):
    """Base of every error tabserve raises on purpose."""

    status: int = 500
    title: str = "Internal error"
    slug: str = "internal-error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class ArtifactError(TabserveError):
    status = 422  # in the API: the model version asked for (reload, metadata) is not usable
    title = "Model artifact error"
    slug = "artifact-error"


class IntegrityError(ArtifactError):
    """A file is missing or its sha256 differs from the manifest."""

    title = "Model artifact integrity error"
    slug = "artifact-integrity"

    def __init__(self, detail: str, *, path: str, expected: str | None, actual: str | None) -> None:
        super().__init__(detail)
        self.path = path
        self.expected = expected
        self.actual = actual


class ManifestError(ArtifactError):
    title = "Invalid model manifest"
    slug = "manifest-invalid"


class ModelNotFoundError(TabserveError):
    status = 404
    title = "Model not found"
    slug = "model-not-found"


class ModelUnavailableError(TabserveError):
    status = 503
    title = "Model unavailable"
    slug = "model-unavailable"


class RequestValidationError(TabserveError):
    status = 422
    title = "Invalid request"
    slug = "validation-error"

    def __init__(self, errors: list[FieldError], detail: str | None = None) -> None:
        if not errors:
            raise ValueError("RequestValidationError needs at least one FieldError")
        first = errors[0]
        fields = ", ".join(e.field for e in errors[:10]) + (", ..." if len(errors) > 10 else "")
        summary = detail or (
            f"{first.field}: {first.message}"
            if len(errors) == 1
            else f"{len(errors)} invalid fields ({fields}); first: {first.field}: {first.message}"
        )
        super().__init__(summary)
        self.errors = errors


class BadRequestError(TabserveError):
    status = 400
    title = "Malformed request"
    slug = "bad-request"


class PayloadTooLargeError(TabserveError):
    status = 413
    title = "Payload too large"
    slug = "payload-too-large"


class RequestTimeoutError(TabserveError):
    status = 408
    title = "Request timeout"
    slug = "request-timeout"


class UnsupportedMediaTypeError(TabserveError):
    status = 415
    title = "Unsupported media type"
    slug = "unsupported-media-type"


class ServiceUnavailableError(TabserveError):
    status = 503
    title = "Service unavailable"
    slug = "service-unavailable"


class OverloadedError(TabserveError):
    status = 503
    title = "Server overloaded"
    slug = "overloaded"

    def __init__(self, detail: str, *, retry_after_s: int = 1) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class RateLimitedError(TabserveError):
    status = 429
    title = "Too many requests"
    slug = "rate-limited"

    def __init__(self, detail: str, *, retry_after_s: int = 1) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class NotFoundError(TabserveError):
    status = 404
    title = "Not found"
    slug = "not-found"


class ConflictError(TabserveError):
    status = 409
    title = "Conflict"
    slug = "conflict"


class UnauthorizedError(TabserveError):
    status = 401
    title = "Unauthorized"
    slug = "unauthorized"

    def __init__(self, detail: str, *, challenge: str = 'Bearer realm="tabserve"') -> None:
        super().__init__(detail)
        self.challenge = challenge
        """The ``WWW-Authenticate`` header of the answer."""


class ForbiddenError(TabserveError):
    status = 403
    title = "Forbidden"
    slug = "forbidden"


class ConfigurationError(TabserveError):
    """Settings that cannot work together; the service refuses to start (exit code 1, the reason on stderr)."""

    title = "Configuration error"
    slug = "configuration-error"


class StoreError(TabserveError):
    status = 503  # in the API: the prediction log's database cannot answer right now (e.g. feedback)
    title = "Prediction log error"
    slug = "store-error"


class ScoreInputError(TabserveError):
    """``tabserve score``: the input cannot be read, or its columns do not fit the model (named in the detail)."""

    status = 400
    title = "Bad input file"
    slug = "bad-input-file"


class BuildError(TabserveError):
    """``tabserve build``: the data, spec or model given cannot make a sound model version (found before any work
    where possible; the detail names the column, row, file or estimator)."""

    status = 400
    title = "Build refused"
    slug = "build-refused"
