"""Who is calling: the principal of a call on the client gRPC listener.

`Authentication.principal_of(context)` is the one function the services' request wrapper
(`raftka.cluster.handlers`) calls. It asks each authenticator of its chain in turn; the first that
recognises credentials of its kind names the principal ("User:<name>"). An authenticator answers
None when the call carries no credentials of its kind, and raises AuthenticationFailedError when it
carries bad ones (a bad token is refused, never treated as anonymous). A call that no authenticator
recognises is `ANONYMOUS` when the operator allows it (`--allow-anonymous`), or when no authenticator
is configured at all (the broker is open, as before authentication existed); else it is refused.

Bearer tokens (`authorization: Bearer <token>` metadata) are either static (`--auth-token-file`:
lines of `TOKEN PRINCIPAL`) or JWTs verified against a JWKS file (`--auth-jwks`) or a PEM public key
(`--auth-jwt-key`). The algorithms a JWT may use follow from the key that verifies it (RS256 for an
RSA key, ES256 for a P-256 key), never from the token's own header, so `alg: none` and algorithm
confusion (an HMAC token "signed" with the public key) are refused. Issuer, audience, `exp` (always
required) and `nbf` are checked with `--auth-clock-skew-s` of leeway; the principal is `User:` plus
the claim `--auth-principal-claim` (default `sub`).

The JWKS or key file and the static token file are read again when they change (checked with the
TLS files, every `RELOAD_INTERVAL_S`: `Authentication.refresh`), so keys and tokens rotate without a
restart; a replacement that cannot be parsed is logged and the previous content stays in force.

Invariant: `principal_of` either returns a principal the operator configured a way to prove, or
ANONYMOUS under the rules above, or raises AuthenticationFailedError; it never blocks.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generic, Sequence, TypeVar

import grpc
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from raftka.cluster.principal import CertificatePrincipal
from raftka.cluster.principal_rules import PrincipalRule
from raftka.errors import AuthenticationFailedError
from raftka.wire.files import file_stamp
from raftka.wire.headers import AUTHORIZATION_HEADER

log = logging.getLogger(__name__)

Principal = str
"""`User:<name>` (Kafka's principal form)."""

ANONYMOUS: Principal = "User:ANONYMOUS"
BEARER = "bearer "

Authenticator = Callable[[grpc.aio.ServicerContext], "Principal | None"]
"""Names the caller from the call's credentials of one kind; None when the call carries none of them."""


def bearer_token(context: grpc.aio.ServicerContext) -> str | None:
    """The call's bearer token, None without an `authorization` header; a header of another scheme
    is refused rather than ignored."""
    for key, value in context.invocation_metadata() or ():
        if key == AUTHORIZATION_HEADER:
            text = value.decode("latin-1") if isinstance(value, bytes) else value
            if not text.lower().startswith(BEARER) or not text[len(BEARER):].strip():
                raise AuthenticationFailedError("the authorization metadata is not 'Bearer <token>'")
            return text[len(BEARER):].strip()
    return None


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


T = TypeVar("T")


class _Reloaded(Generic[T]):
    """What `load` makes of a file, made again by `refresh` when the file changed. The first load's
    errors propagate (the broker refuses to start); a later one's are logged and the previous value
    stays, until the file changes again."""

    def __init__(self, path: Path, load: Callable[[Path], T]) -> None:
        self.path = path
        self._load = load
        self._stamp = file_stamp(path)
        self.value = load(path)

    def refresh(self) -> bool:
        """Whether a changed file was taken."""
        stamp = file_stamp(self.path)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            value = self._load(self.path)
        except (OSError, ValueError, jwt.PyJWTError) as exc:
            log.warning("auth file reload failed, keeping its previous content path=%s error=%s: %s", self.path,
                        type(exc).__name__, exc)
            return False
        self.value = value
        log.info("auth file reloaded path=%s", self.path)
        return True


def _static_tokens(path: Path) -> dict[bytes, Principal]:
    principals: dict[bytes, Principal] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or ":" not in parts[1]:
            raise ValueError(f"{path}:{number}: expected 'TOKEN PRINCIPAL' (e.g. 's3cret User:alice')")
        principals[_digest(parts[0])] = parts[1]
    return principals


class StaticTokens:
    """`--auth-token-file`: one `TOKEN PRINCIPAL` per line (blank lines and `#` comments skipped), read
    again when the file changes. Tokens are kept only as SHA-256 digests, so lookups do not compare the
    secret byte by byte."""

    def __init__(self, path: Path) -> None:
        self._principals = _Reloaded(path, _static_tokens)

    def find(self, token: str) -> Principal | None:
        return self._principals.value.get(_digest(token))

    def refresh(self) -> bool:
        return self._principals.refresh()


_ALGORITHMS = {"RSA": "RS256", "EC": "ES256"}


def _algorithm_of(key: Any) -> str:
    """The one algorithm a public key verifies: RS256 for RSA, ES256 for EC P-256."""
    if isinstance(key, rsa.RSAPublicKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return "ES256"
    raise ValueError(f"unsupported JWT verification key {type(key).__name__}: give an RSA or EC P-256 public key")


@dataclass(frozen=True)
class JwtSettings:
    issuer: str = ""
    audience: str = ""
    clock_skew_s: float = 30.0
    principal_claim: str = "sub"


VerificationKeys = dict[str, tuple[Any, str]]
"""kid -> (public key, the one algorithm it verifies); a PEM key has kid ""."""


def _pem_keys(path: Path) -> VerificationKeys:
    key = load_pem_public_key(path.read_bytes())
    return {"": (key, _algorithm_of(key))}


def _jwks_keys(path: Path) -> VerificationKeys:
    keys: VerificationKeys = {}
    document = json.loads(path.read_text())
    if not isinstance(document, dict):
        raise ValueError(f"{path}: a JWKS is a JSON object with a 'keys' list")
    for raw in document.get("keys", []):
        if raw.get("use", "sig") != "sig" or raw.get("kty") not in _ALGORITHMS:
            continue
        key = jwt.PyJWK(raw, algorithm=_ALGORITHMS[raw["kty"]]).key
        keys[raw.get("kid", "")] = (key, _algorithm_of(key))
    if not keys:
        raise ValueError(f"{path}: no RSA or EC signing key in the JWKS")
    return keys


class JwtVerifier:
    """Verifies JWTs against a JWKS file's keys (chosen by the token's `kid`) or one PEM public key,
    the file read again when it changes (`refresh`)."""

    def __init__(self, keys: _Reloaded[VerificationKeys], settings: JwtSettings) -> None:
        self._keys = keys
        self._settings = settings

    @classmethod
    def from_pem(cls, path: Path, settings: JwtSettings) -> JwtVerifier:
        return cls(_Reloaded(path, _pem_keys), settings)

    @classmethod
    def from_jwks(cls, path: Path, settings: JwtSettings) -> JwtVerifier:
        return cls(_Reloaded(path, _jwks_keys), settings)

    def refresh(self) -> bool:
        return self._keys.refresh()

    def verify(self, token: str) -> Principal:
        settings = self._settings
        keys = self._keys.value
        try:
            header = jwt.get_unverified_header(token)
            kid = header.get("kid", "")
            if kid in keys:
                key, algorithm = keys[kid]
            elif len(keys) == 1 and not kid:
                key, algorithm = next(iter(keys.values()))
            else:
                raise AuthenticationFailedError(f"JWT rejected: no verification key with kid {kid!r}")
            claims = jwt.decode(token, key, algorithms=[algorithm], audience=settings.audience or None,
                                issuer=settings.issuer or None, leeway=settings.clock_skew_s,
                                options={"require": ["exp", *(["iss"] if settings.issuer else []),
                                                     *(["aud"] if settings.audience else [])],
                                         "verify_aud": bool(settings.audience)})
        except jwt.ExpiredSignatureError:
            raise AuthenticationFailedError("JWT rejected: expired (exp is past)") from None
        except jwt.ImmatureSignatureError:
            raise AuthenticationFailedError("JWT rejected: not valid yet (nbf or iat is in the future)") from None
        except jwt.InvalidAudienceError:
            raise AuthenticationFailedError(f"JWT rejected: audience is not {settings.audience!r}") from None
        except jwt.InvalidIssuerError:
            raise AuthenticationFailedError(f"JWT rejected: issuer is not {settings.issuer!r}") from None
        except jwt.InvalidAlgorithmError:
            raise AuthenticationFailedError("JWT rejected: its algorithm is not the one its verification key "
                                            "allows") from None
        except jwt.InvalidSignatureError:
            raise AuthenticationFailedError("JWT rejected: bad signature") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthenticationFailedError(f"JWT rejected: it has no {exc.claim!r} claim") from None
        except jwt.InvalidTokenError as exc:
            raise AuthenticationFailedError(f"JWT rejected: malformed ({exc})") from None
        subject = claims.get(settings.principal_claim)
        if not isinstance(subject, str) or not subject:
            raise AuthenticationFailedError(f"JWT rejected: it has no {settings.principal_claim!r} claim to name "
                                            "its principal")
        return f"User:{subject}"


class BearerAuthenticator:
    """A static token names its principal; any other token must be a JWT one of the verifiers accepts."""

    def __init__(self, static: StaticTokens | None, verifier: JwtVerifier | None) -> None:
        self._static = static
        self._verifier = verifier

    def __call__(self, context: grpc.aio.ServicerContext) -> Principal | None:
        token = bearer_token(context)
        return None if token is None else self.verify(token)

    def refresh(self) -> None:
        """Take changed token and key files."""
        for source in (self._static, self._verifier):
            if source is not None:
                source.refresh()

    def verify(self, token: str) -> Principal:
        principal = self._static.find(token) if self._static is not None else None
        if principal is not None:
            return principal
        if self._verifier is None or token.count(".") != 2:
            raise AuthenticationFailedError("unknown token")
        return self._verifier.verify(token)


@dataclass(frozen=True)
class AuthSettings:
    """The broker's authentication flags."""

    jwks: Path | None = None
    jwt_key: Path | None = None
    token_file: Path | None = None
    jwt: JwtSettings = JwtSettings()
    allow_anonymous: bool = False
    principal_rules: tuple[PrincipalRule, ...] = ()
    """`--tls-principal-rule`: how a verified client certificate names its principal; none: DEFAULT."""

    @property
    def configured(self) -> bool:
        return any((self.jwks, self.jwt_key, self.token_file))

    def validate(self) -> None:
        if self.jwks and self.jwt_key:
            raise ValueError("give --auth-jwks or --auth-jwt-key, not both")
        if self.jwt.clock_skew_s < 0:
            raise ValueError(f"--auth-clock-skew-s must not be negative, not {self.jwt.clock_skew_s}")


def authenticators(settings: AuthSettings, *, client_certificates: bool = False) -> list[Authenticator]:
    """The chain the broker asks, in order: a bearer token, then (when the gRPC listener requires
    verified client certificates) the certificate's principal under `settings.principal_rules`
    (`raftka.cluster.principal`)."""
    chain: list[Authenticator] = []
    verifier = (JwtVerifier.from_jwks(settings.jwks, settings.jwt) if settings.jwks
                else JwtVerifier.from_pem(settings.jwt_key, settings.jwt) if settings.jwt_key else None)
    static = StaticTokens(settings.token_file) if settings.token_file else None
    if verifier is not None or static is not None:
        chain.append(BearerAuthenticator(static, verifier))
    if client_certificates:
        chain.append(CertificatePrincipal(settings.principal_rules))
    return chain


def token_principal(chain: Sequence[Authenticator], token: str) -> Principal:
    """The principal a bearer token proves to this chain (the broker checks its own `--broker-token-file`
    with it at start-up: that principal is a super-user). Raises AuthenticationFailedError."""
    for authenticator in chain:
        if isinstance(authenticator, BearerAuthenticator):
            return authenticator.verify(token)
    raise AuthenticationFailedError("no bearer-token authenticator is configured to verify the broker token")


class Authentication:
    def __init__(self, chain: Sequence[Authenticator], *, allow_anonymous: bool) -> None:
        self._chain = tuple(chain)
        self._anonymous = allow_anonymous or not self._chain

    @property
    def enabled(self) -> bool:
        return bool(self._chain)

    def refresh(self) -> None:
        """Take changed token and key files (the broker calls this every RELOAD_INTERVAL_S)."""
        for authenticator in self._chain:
            if isinstance(authenticator, BearerAuthenticator):
                authenticator.refresh()

    def principal_of(self, context: grpc.aio.ServicerContext) -> Principal:
        """The caller's principal; raises AuthenticationFailedError for bad or missing credentials."""
        for authenticate in self._chain:
            principal = authenticate(context)
            if principal is not None:
                return principal
        if self._anonymous:
            return ANONYMOUS
        raise AuthenticationFailedError("authentication required: send 'authorization: Bearer <token>' metadata")
