"""OIDC access tokens (JWT) on `mlbox serve`: issuers from oidc.yaml, their keys, the checks, claims to roles.

The issuers live in a YAML file in the box (setting `auth.oidc_file`, read with yaml.safe_load) because a
list of mappings does not fit a scalar setting or an environment variable. Keys come from a JWKS URL
(fetched with a short timeout, cached, refetched after `auth.oidc_jwks_max_age_s` and on an unknown `kid`
at most once per `auth.oidc_jwks_refresh_s`) or a JWKS file (reread when it changes). Verification is
joserfc's; the order of checks is ours so that every refusal says what was wrong: shape, `alg` (only the
issuer's asymmetric algorithms: never `none`, never HMAC, so a public key can't be replayed as an HMAC
secret), `iss` (exact), key, signature, `exp`/`nbf` (with `auth.oidc_leeway_s`), `aud`, then the role
mapping. A verified token is cached until its `exp`, and the cache is dropped whenever the configuration
or any issuer's key set changes, so an edited oidc.yaml or a rotated-out key stops a token at once.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mlbox import clock
from mlbox.config import Settings
from mlbox.errors import AuthError, PermissionDenied, SettingsError, UsageError
from mlbox.security.identity import Grant, check_role
from mlbox.security.jwks import KeySource
from mlbox.security.scopes import Scopes
from mlbox.types import Actor, Role, check_keys

log = logging.getLogger("mlbox.serve")
# Asymmetric JWS algorithms only: a verifier that allowed HS256 could be handed the issuer's public key as
# the HMAC secret (the classic key-confusion attack), and `none` carries no signature at all.
ASYMMETRIC = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA", "Ed25519"})
JWT_SHAPE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")
SAFE_SUBJECT = re.compile(r"^[A-Za-z0-9._@+-]{1,128}$")
MAX_TOKEN_CHARS = 16384
RECHECK_SECONDS = 0.25  # how often the config and JWKS files are stat-ed for changes
ISSUER_KEYS = {"issuer", "audience", "jwks_url", "jwks_file", "algorithms", "user_claim", "role_claim", "roles", "scope_claim"}


def looks_like_jwt(token: str) -> bool:
    """Whether `token` has a JWS compact shape (three base64url segments) rather than `mlbx_...`."""
    return bool(JWT_SHAPE.fullmatch(token))


@dataclass(frozen=True, kw_only=True)
class Issuer:
    """One trusted identity provider: who it is, where its keys are, what it may sign with, how claims map to roles."""

    issuer: str
    audience: str
    jwks_url: str | None
    jwks_file: Path | None
    algorithms: tuple[str, ...]
    user_claim: str
    role_claim: str
    roles: tuple[tuple[str, Role], ...]  # in file order: the first value the token carries wins
    scope_claim: str | None
    host: str


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_issuer(raw: Any, where: str, base: Path) -> Issuer:
    """One checked entry of oidc.yaml's `issuers` list."""
    try:
        check_keys(raw, ISSUER_KEYS, where)
    except UsageError as exc:
        raise SettingsError(exc.message, hint=exc.hint) from None
    for key in ("issuer", "audience", "role_claim", "roles"):
        if not raw.get(key):
            raise SettingsError(f"{where}: '{key}' is required")
    issuer, audience = raw["issuer"], raw["audience"]
    if not isinstance(issuer, str) or not isinstance(audience, str):
        raise SettingsError(f"{where}: 'issuer' and 'audience' must be strings")
    host = urlsplit(issuer).hostname or re.sub(r"[^A-Za-z0-9.-]", "_", issuer)[:64]
    url, path = raw.get("jwks_url"), raw.get("jwks_file")
    if bool(url) == bool(path):
        raise SettingsError(f"{where}: give exactly one of 'jwks_url' and 'jwks_file'")
    if url:
        parts = urlsplit(str(url))
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise SettingsError(f"{where}: 'jwks_url' must be an https URL")
        if parts.scheme == "http" and not _is_loopback(parts.hostname):  # keys over plain HTTP could be swapped
            raise SettingsError(f"{where}: 'jwks_url' must use https (plain http only on loopback)")
    algorithms = raw.get("algorithms", ["RS256"])
    if isinstance(algorithms, str):
        algorithms = [algorithms]
    if not isinstance(algorithms, list) or not algorithms or not all(a in ASYMMETRIC for a in algorithms):
        raise SettingsError(f"{where}: 'algorithms' must list asymmetric JWS algorithms", hint=", ".join(sorted(ASYMMETRIC)))
    roles = raw["roles"]
    if not isinstance(roles, Mapping):
        raise SettingsError(f"{where}: 'roles' must map claim values to mlbox roles")
    try:
        mapping = tuple((str(value), check_role(str(role))) for value, role in roles.items())
    except UsageError as exc:
        raise SettingsError(f"{where}: {exc.message}", hint=exc.hint) from None
    claims = {k: raw.get(k, d) for k, d in (("user_claim", "sub"), ("role_claim", ""), ("scope_claim", None))}
    if not all(v is None or (isinstance(v, str) and v) for v in claims.values()):
        raise SettingsError(f"{where}: claim names must be non-empty strings")
    return Issuer(
        issuer=issuer, audience=audience, jwks_url=str(url) if url else None,
        jwks_file=(base / str(path)) if path else None, algorithms=tuple(algorithms),
        user_claim=claims["user_claim"], role_claim=claims["role_claim"], roles=mapping,
        scope_claim=claims["scope_claim"], host=host,
    )  # fmt: skip


def load_issuers(path: Path, base: Path) -> tuple[Issuer, ...]:
    """The issuers of an oidc.yaml file (none when it does not exist); SettingsError names what is wrong."""
    import yaml

    if not path.is_file():
        return ()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{path}: not valid YAML ({str(exc)[:200]})") from None
    if not isinstance(data, Mapping) or set(data) - {"issuers"} or not isinstance(data.get("issuers", []), list):
        raise SettingsError(f"{path}: expected a mapping with one key, 'issuers', a list")
    issuers = tuple(parse_issuer(raw, f"{path}: issuers[{i}]", base) for i, raw in enumerate(data.get("issuers", [])))
    if len({i.issuer for i in issuers}) != len(issuers):
        raise SettingsError(f"{path}: an issuer is listed twice")
    return issuers


def _b64json(segment: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def _claim(claims: Mapping[str, Any], path: str) -> Any:
    """A claim by name, or by dotted path into nested objects (e.g. realm_access.roles)."""
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _words(value: Any) -> list[str]:
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def actor_name(issuer: Issuer, subject: str) -> str:
    """`oidc:<issuer host>:<subject>`; a subject with characters unsafe in tables and logs becomes its hash."""
    safe = subject if SAFE_SUBJECT.fullmatch(subject) else "sha256-" + hashlib.sha256(subject.encode()).hexdigest()[:32]
    return f"oidc:{issuer.host}:{safe}"


def _invalid(message: str, hint: str = "") -> AuthError:
    return AuthError(message, hint=hint or "get a new access token from your identity provider")


@dataclass
class OidcVerifier:
    """The worker's OIDC state: the issuers (reloaded when oidc.yaml changes), their keys, and verified grants."""

    settings: Settings
    monotonic: Callable[[], float] = time.monotonic
    issuers: dict[str, Issuer] = field(default_factory=dict)
    sources: dict[str, KeySource] = field(default_factory=dict)
    problem: str = ""  # set when oidc.yaml is invalid: every JWT is refused until it is fixed
    _stamp: tuple[float, int] | None = None
    _checked: float = float("-inf")
    _cache: dict[str, tuple[Grant, str, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._reload(raise_errors=True)

    @property
    def path(self) -> Path:
        return self.settings.home / str(self.settings["auth.oidc_file"])

    def _file_stamp(self) -> tuple[float, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime, st.st_size)

    def _reload(self, raise_errors: bool = False) -> None:
        self._stamp = self._file_stamp()
        self._cache.clear()
        try:
            issuers = load_issuers(self.path, self.settings.home)
        except SettingsError as exc:
            if raise_errors:
                raise
            log.error("OIDC configuration %s is invalid; OIDC tokens are refused until it is fixed: %s", self.path, exc)
            self.issuers, self.sources, self.problem = {}, {}, str(exc)
            return
        s = self.settings
        self.issuers, self.problem = {i.issuer: i for i in issuers}, ""
        self.sources = {
            i.issuer: KeySource(i, float(s["auth.oidc_jwks_timeout_s"]), float(s["auth.oidc_jwks_refresh_s"]),
                                float(s["auth.oidc_jwks_max_age_s"]), self.monotonic)
            for i in issuers
        }  # fmt: skip

    def _check_file(self) -> None:
        now = self.monotonic()
        if now - self._checked >= RECHECK_SECONDS:
            self._checked = now
            if self._file_stamp() != self._stamp:
                self._reload()

    def grant(self, token: str, on_verified: Callable[[Grant], None] | None = None) -> Grant:
        """What a JWT access token grants; AuthError (401) saying what was wrong, PermissionDenied (403) when
        no role mapping matches. `on_verified` sees each grant verified afresh (not those from the cache)."""
        self._check_file()
        cached = self._cache.get(token)
        if cached is not None:
            grant, issuer, changes = cached
            source = self.sources.get(issuer)
            if source is not None and not grant.expired():
                source.current()  # past max age or a changed file: reread, which may bump `changes`
                if source.changes == changes:
                    return grant
            del self._cache[token]
        grant, issuer = self._verify(token)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[token] = (grant, issuer, self.sources[issuer].changes)
        if on_verified is not None:
            on_verified(grant)
        return grant

    def _verify(self, token: str) -> tuple[Grant, str]:
        if self.problem:
            raise _invalid("OIDC tokens are refused: this server's OIDC configuration is invalid", "see the server log")
        if not self.issuers:
            raise _invalid("this server accepts no OIDC tokens (no issuer is configured)",
                           "an admin lists issuers in the box's oidc.yaml, or use an mlbx_ API token")  # fmt: skip
        if len(token) > MAX_TOKEN_CHARS or not looks_like_jwt(token):
            raise _invalid("malformed JWT")
        head, body, _ = token.split(".")
        try:
            header, claims = _b64json(head), _b64json(body)
        except (ValueError, UnicodeDecodeError):
            raise _invalid("malformed JWT: its header or claims are not base64url JSON") from None
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise _invalid("malformed JWT: its header and claims must be JSON objects")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in ASYMMETRIC:
            shown = alg[:20] if isinstance(alg, str) else alg
            raise _invalid(f"JWT algorithm {shown!r} is not allowed", "only asymmetric signatures (RS256, ES256, EdDSA ...)")
        iss = claims.get("iss")
        issuer = self.issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise _invalid("JWT from an unknown issuer", "its iss must be one of the issuers in oidc.yaml, exactly")
        if alg not in issuer.algorithms:
            raise _invalid(f"JWT algorithm {alg} is not allowed for this issuer", f"allowed: {', '.join(issuer.algorithms)}")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _invalid("malformed JWT: kid must be a string")
        from joserfc import errors, jwt  # only once an issuer is configured: a Bento need not carry joserfc

        source = self.sources[issuer.issuer]
        keys = source.for_kid(kid)
        if keys is None:
            raise _invalid("JWT signed with a key this issuer does not publish (unknown kid)" if source.keys is not None
                           else "the issuer's keys could not be read", "the key may have been rotated out")  # fmt: skip
        try:
            verified = jwt.decode(token, keys, algorithms=[alg])
        except errors.BadSignatureError:
            raise _invalid("JWT signature is invalid") from None
        except errors.JoseError as exc:
            raise _invalid(f"JWT could not be verified: {exc.error}") from None
        self._check_claims(issuer, verified.claims)
        return self._grant(issuer, verified.claims), issuer.issuer

    def _check_claims(self, issuer: Issuer, claims: dict[str, Any]) -> None:
        from joserfc import errors, jwt

        registry = jwt.JWTClaimsRegistry(
            now=lambda: int(clock.now().timestamp()), leeway=int(self.settings["auth.oidc_leeway_s"]),
            iss={"essential": True, "value": issuer.issuer}, aud={"essential": True, "value": issuer.audience},
            exp={"essential": True},
        )  # fmt: skip
        try:
            registry.validate(claims)
        except errors.ExpiredTokenError:
            raise _invalid("JWT has expired") from None
        except errors.MissingClaimError as exc:
            raise _invalid(f"JWT lacks required claims: {exc.claim}") from None
        except errors.InvalidClaimError as exc:
            message = {"nbf": "JWT is not valid yet (nbf is in the future)", "aud": "JWT is for another audience",
                       "iat": "JWT was issued in the future"}.get(exc.claim, f"JWT claim {exc.claim!r} is invalid")  # fmt: skip
            raise _invalid(message, f"this server's audience is {issuer.audience!r}" if exc.claim == "aud" else "") from None

    def _grant(self, issuer: Issuer, claims: dict[str, Any]) -> Grant:
        subject = _claim(claims, issuer.user_claim)
        if not isinstance(subject, str) or not subject:
            raise _invalid(f"JWT lacks its user claim {issuer.user_claim!r}")
        name = actor_name(issuer, subject)
        held = set(_words(_claim(claims, issuer.role_claim)))
        role = next((r for value, r in issuer.roles if value in held), None)
        if role is None:
            raise PermissionDenied(
                f"{name} has no mlbox role: none of its {issuer.role_claim!r} values is mapped",
                hint="an admin maps claim values to roles under this issuer's 'roles' in oidc.yaml",
            )
        scopes: Scopes | None = None
        if issuer.scope_claim is not None:
            # only deployment:/view: words count, so the standard `scope` claim ("openid profile ...") can carry them
            words = [w for w in _words(_claim(claims, issuer.scope_claim)) if w.startswith(("deployment:", "view:"))]
            if len(words) > 256 or any(len(w) > 80 for w in words):
                raise _invalid(f"JWT claim {issuer.scope_claim!r} is too large")
            try:
                scopes = Scopes.parse(words)
            except UsageError as exc:
                raise _invalid(f"JWT claim {issuer.scope_claim!r}: {exc.message}") from None
        try:
            expires = clock.iso(datetime.fromtimestamp(float(claims["exp"]), UTC))
        except (OverflowError, OSError, ValueError):  # an exp past year 9999 passed the check; cap it
            expires = clock.iso(datetime(9999, 1, 1, tzinfo=UTC))
        return Grant(actor=Actor(name, role, "token"), token_id=f"oidc:{issuer.host}", expires_at=expires, scopes=scopes)
