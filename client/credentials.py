"""What every call a client makes carries: its bearer-token credentials and its client id.

A client takes one of `token` (a fixed string), `token_file` (a file holding the token, read again
whenever it changes, so a sidecar that rotates the file is followed without a restart) or
`token_provider` (a callable returning the current token; it is called for every new call and
stream, so it should return a cached token and refresh it itself shortly before it expires). The
token travels as `authorization: Bearer <token>` metadata, added by a channel interceptor; a call
with no credentials configured is sent as before.

The client id (`client_id=`, Kafka's `client.id`) names the application, for quotas per client id:
the same interceptor adds it as `raftka-client-id` metadata (`raftka.wire.headers`), after checking
it here, so a bad one is a ValueError when the client is made rather than a refused call later.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable

import grpc

from raftka.wire.files import FileStamp, file_stamp
from raftka.wire.headers import AUTHORIZATION_HEADER, CLIENT_ID_HEADER, client_id_problem

TokenProvider = Callable[[], str]


class _TokenFile:
    """Reads the file again when it changes (`raftka.wire.files`)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._stamp: FileStamp = None
        self._token = ""
        self()

    def __call__(self) -> str:
        stamp = file_stamp(self._path)
        with self._lock:
            if stamp is None or stamp != self._stamp:
                self._token, self._stamp = self._path.read_text().strip(), stamp
            return self._token


def token_source(token: str | None = None, token_file: str | Path | None = None,
                 token_provider: TokenProvider | None = None) -> TokenProvider | None:
    """One provider from the client options (at most one of them may be given)."""
    given = [option for option in (token, token_file, token_provider) if option is not None]
    if len(given) > 1:
        raise ValueError("give at most one of token, token_file and token_provider")
    if token is not None:
        if not token.strip():
            raise ValueError("token is empty")
        fixed = token.strip()
        return lambda: fixed
    if token_file is not None:
        return _TokenFile(Path(token_file))
    return token_provider


def checked_client_id(client_id: str) -> str:
    """`client_id` if it is one ("" is: none); ValueError saying why not."""
    problem = client_id_problem(client_id)
    if problem is not None:
        raise ValueError(problem)
    return client_id


class _MetadataInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                           grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    def __init__(self, provider: TokenProvider | None, client_id: str) -> None:
        self._provider = provider
        self._client_id = ((CLIENT_ID_HEADER, client_id),) if client_id else ()

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        token = ((AUTHORIZATION_HEADER, f"Bearer {self._provider()}"),) if self._provider is not None else ()
        metadata = [*(details.metadata or ()), *token, *self._client_id]
        return _CallDetails(details.method, details.timeout, metadata, details.credentials,
                            getattr(details, "wait_for_ready", None), getattr(details, "compression", None))

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, method: str, timeout: float | None, metadata: Any, credentials: Any,
                 wait_for_ready: bool | None, compression: Any) -> None:
        self.method = method
        self.timeout = timeout
        self.metadata = metadata
        self.credentials = credentials
        self.wait_for_ready = wait_for_ready
        self.compression = compression


def identified(channel: grpc.Channel, provider: TokenProvider | None, client_id: str) -> grpc.Channel:
    """`channel` whose calls carry the provider's token and the client id (the channel itself when
    there is neither)."""
    if provider is None and not client_id:
        return channel
    return grpc.intercept_channel(channel, _MetadataInterceptor(provider, client_id))
