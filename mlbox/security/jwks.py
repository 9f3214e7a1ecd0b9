"""An OIDC issuer's signing keys: a JWKS from a URL or a file, public asymmetric keys only, cached and refreshed.

A URL is fetched with a short timeout (at most 1 MiB, no redirects), used for `max_age_s`, and fetched
again on an unknown `kid` at most once per `refresh_s` (a rotation, throttled so made-up kids cannot
flood the provider); a file is reread when its mtime or size changes. `changes` counts changes of the
key set's content, so the verifier can drop what it verified with an older one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mlbox.errors import MlboxError, SettingsError

if TYPE_CHECKING:
    from mlbox.security.oidc import Issuer

log = logging.getLogger("mlbox.serve")
MAX_JWKS_BYTES = 1 << 20
PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
STAT_SECONDS = 0.25  # a JWKS file is stat-ed for changes at most this often


def public_key_set(data: Any) -> Any:
    """A joserfc KeySet of the asymmetric signing keys in a JWKS document, public parts only."""
    from joserfc.jwk import KeySet

    if not isinstance(data, Mapping) or not isinstance(data.get("keys"), list):
        raise SettingsError("a JWKS document is an object with a 'keys' list")
    keys = [
        {k: v for k, v in key.items() if k not in PRIVATE_MEMBERS}
        for key in data["keys"]
        if isinstance(key, Mapping) and key.get("kty") in ("RSA", "EC", "OKP") and key.get("use", "sig") == "sig"
    ]
    try:
        return KeySet.import_key_set({"keys": keys})
    except Exception as exc:  # joserfc raises several error types for a malformed key
        raise SettingsError(f"a key in the JWKS could not be read: {str(exc)[:200]}") from None


@dataclass
class KeySource:
    """One issuer's keys: fetched or read, cached, refreshed on age, on an unknown kid (throttled) or a changed file."""

    issuer: Issuer
    timeout_s: float
    refresh_s: float
    max_age_s: float
    monotonic: Callable[[], float] = time.monotonic
    keys: Any = None
    digest: str = ""
    fetched: float = float("-inf")
    stamp: tuple[float, int] | None = None
    stat_at: float = float("-inf")
    changes: int = 0  # bumped whenever the key set's content changes

    def _read(self) -> bytes:
        if self.issuer.jwks_file is not None:
            return self.issuer.jwks_file.read_bytes()[: MAX_JWKS_BYTES + 1]
        import httpx

        assert self.issuer.jwks_url is not None
        try:
            with httpx.stream("GET", self.issuer.jwks_url, timeout=self.timeout_s, follow_redirects=False) as resp:
                if resp.status_code != 200:
                    raise OSError(f"HTTP {resp.status_code}")
                body = b""
                for chunk in resp.iter_bytes():
                    body += chunk
                    if len(body) > MAX_JWKS_BYTES:
                        break
                return body
        except httpx.HTTPError as exc:  # connect, read and timeout errors alike
            raise OSError(f"{type(exc).__name__}: {exc}") from None

    def refresh(self) -> None:
        """Read the keys now; on failure keep the ones held (logged): an unreachable provider is not a revocation."""
        self.fetched = self.monotonic()
        try:
            body = self._read()
            if len(body) > MAX_JWKS_BYTES:
                raise OSError("larger than 1 MiB")
            keys = public_key_set(json.loads(body))
        except (OSError, ValueError, MlboxError) as exc:  # ValueError: not JSON; MlboxError: not a JWKS
            log.warning("OIDC keys of %s could not be read: %s", self.issuer.issuer, exc)
            return
        digest = hashlib.sha256(body).hexdigest()
        if digest != self.digest:
            self.keys, self.digest = keys, digest
            self.changes += 1

    def file_stamp(self) -> tuple[float, int] | None:
        if self.issuer.jwks_file is None:
            return None
        try:
            st = self.issuer.jwks_file.stat()
        except OSError:
            return None
        return (st.st_mtime, st.st_size)

    def current(self) -> Any:
        """The key set, refreshed first when it is older than max age (URL) or its file changed."""
        if self.issuer.jwks_file is not None:
            now = self.monotonic()
            if now - self.stat_at < STAT_SECONDS and self.keys is not None:
                return self.keys  # stat-ed a moment ago: a served request costs no syscall
            self.stat_at = now
            stamp = self.file_stamp()
            if stamp != self.stamp or self.keys is None:
                self.stamp = stamp
                self.refresh()
        elif self.keys is None:  # never read yet, or the provider was down: retry at most every refresh_s
            if self.monotonic() - self.fetched >= self.refresh_s:
                self.refresh()
        elif self.monotonic() - self.fetched >= self.max_age_s:
            self.refresh()
        return self.keys

    def has(self, kid: str | None) -> bool:
        if self.keys is None:
            return False
        if kid is None:
            return len(self.keys.keys) == 1
        return any(k.kid == kid for k in self.keys.keys)

    def for_kid(self, kid: str | None) -> Any:
        """The key set holding `kid`, refetched once when it does not (at most every refresh_s); None if still unknown."""
        self.current()
        if not self.has(kid) and self.monotonic() - self.fetched >= self.refresh_s:
            self.refresh()
        return self.keys if self.has(kid) else None
