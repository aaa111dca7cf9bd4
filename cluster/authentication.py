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

Invariant: `principal_of` either returns a principal the operator configured a way to prove, or
ANONYMOUS under the rules above, or raises AuthenticationFailedError; it never blocks.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import grpc
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from raftka.cluster.principal import tls_principal
from raftka.errors import AuthenticationFailedError
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


class StaticTokens:
    """`--auth-token-file`: one `TOKEN PRINCIPAL` per line (blank lines and `#` comments skipped).
    Tokens are kept only as SHA-256 digests, so lookups do not compare the secret byte by byte."""

    def __init__(self, path: Path) -> None:
        self._principals: dict[bytes, Principal] = {}
        for number, line in enumerate(path.read_text().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) != 2 or ":" not in parts[1]:
                raise ValueError(f"{path}:{number}: expected 'TOKEN PRINCIPAL' (e.g. 's3cret User:alice')")
            self._principals[_digest(parts[0])] = parts[1]

    def find(self, token: str) -> Principal | None:
        return self._principals.get(_digest(token))


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


class JwtVerifier:
    """Verifies JWTs against a JWKS file's keys (chosen by the token's `kid`) or one PEM public key."""

    def __init__(self, keys: dict[str, tuple[Any, str]], settings: JwtSettings) -> None:
        if not keys:
            raise ValueError("no JWT verification key given")
        self._keys = keys
        self._settings = settings

    @classmethod
    def from_pem(cls, path: Path, settings: JwtSettings) -> JwtVerifier:
        key = load_pem_public_key(path.read_bytes())
        return cls({"": (key, _algorithm_of(key))}, settings)

    @classmethod
    def from_jwks(cls, path: Path, settings: JwtSettings) -> JwtVerifier:
        keys: dict[str, tuple[Any, str]] = {}
        for raw in json.loads(path.read_text()).get("keys", []):
            if raw.get("use", "sig") != "sig" or raw.get("kty") not in _ALGORITHMS:
                continue
            key = jwt.PyJWK(raw, algorithm=_ALGORITHMS[raw["kty"]]).key
            keys[raw.get("kid", "")] = (key, _algorithm_of(key))
        return cls(keys, settings)

    def verify(self, token: str) -> Principal:
        settings = self._settings
        try:
            header = jwt.get_unverified_header(token)
            kid = header.get("kid", "")
            if kid in self._keys:
                key, algorithm = self._keys[kid]
            elif len(self._keys) == 1 and not kid:
                key, algorithm = next(iter(self._keys.values()))
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
    verified client certificates) the certificate's principal (`raftka.cluster.principal`)."""
    chain: list[Authenticator] = []
    verifier = (JwtVerifier.from_jwks(settings.jwks, settings.jwt) if settings.jwks
                else JwtVerifier.from_pem(settings.jwt_key, settings.jwt) if settings.jwt_key else None)
    static = StaticTokens(settings.token_file) if settings.token_file else None
    if verifier is not None or static is not None:
        chain.append(BearerAuthenticator(static, verifier))
    if client_certificates:
        chain.append(tls_principal)
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

    def principal_of(self, context: grpc.aio.ServicerContext) -> Principal:
        """The caller's principal; raises AuthenticationFailedError for bad or missing credentials."""
        for authenticate in self._chain:
            principal = authenticate(context)
            if principal is not None:
                return principal
        if self._anonymous:
            return ANONYMOUS
        raise AuthenticationFailedError("authentication required: send 'authorization: Bearer <token>' metadata")
