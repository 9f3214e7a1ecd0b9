"""The one error tree of mlbox; every failure a user can cause is one of these.

    MlboxError                      status 500  code "internal"
    ├── UsageError                  status 400  code "bad_request"      bad input: arguments, files, values
    │   ├── ValidationError         status 422  code "invalid"          data that fails a schema
    │   ├── SettingsError           status 400  code "bad_setting"      malformed or unknown setting
    │   └── PayloadTooLarge         status 413  code "too_large"
    ├── NotFound                    status 404  code "not_found"
    ├── Conflict                    status 409  code "conflict"         lost a compare-and-set race, duplicate name
    ├── AuthError                   status 401  code "unauthenticated"
    │   └── PermissionDenied        status 403  code "forbidden"
    ├── Overloaded                  status 429  code "overloaded"
    └── StoreError                  status 500  code "store"            storage is damaged or from a newer mlbox

Every class carries `status` (HTTP) and `code` (stable string) as plain attributes, so
the CLI maps them to exit codes and the HTTP layer to its JSON envelope without this
module importing either.
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "Conflict",
    "MlboxError",
    "NotFound",
    "Overloaded",
    "PayloadTooLarge",
    "PermissionDenied",
    "SettingsError",
    "StoreError",
    "UsageError",
    "ValidationError",
]


class MlboxError(Exception):
    """Base of every error mlbox raises on purpose."""

    status = 500
    code = "internal"
    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        # HTTP response headers the answer must carry (e.g. WWW-Authenticate on a 401); the CLI ignores them
        self.headers: dict[str, str] = dict(headers or {})

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(MlboxError):
    status = 400
    code = "bad_request"
    exit_code = 2


class ValidationError(UsageError):
    status = 422
    code = "invalid"


class SettingsError(UsageError):
    code = "bad_setting"


class PayloadTooLarge(UsageError):
    status = 413
    code = "too_large"


class NotFound(MlboxError):
    status = 404
    code = "not_found"
    exit_code = 3


class Conflict(MlboxError):
    status = 409
    code = "conflict"
    exit_code = 4


class AuthError(MlboxError):
    status = 401
    code = "unauthenticated"
    exit_code = 5


class PermissionDenied(AuthError):
    status = 403
    code = "forbidden"


class Overloaded(MlboxError):
    status = 429
    code = "overloaded"
    exit_code = 6


class StoreError(MlboxError):
    status = 500
    code = "store"
    exit_code = 7
