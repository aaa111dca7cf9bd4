"""Authentication by bearer token and ACL authorization against a real broker.

The broker runs with a PEM public key for JWTs (RS256), a static token file, issuer and audience
checks, `--authorizer acl` and one super-user. Every refusal must be a precise status that changes
nothing; every allowed call must work.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
from functools import partial

import grpc
import jwt
import pytest
from commands import raftka
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from raftka.client.admin import AclEntry, Admin
from raftka.client.consumer import Consumer
from raftka.client.producer import Producer
from raftka.errors import AuthenticationFailedError, AuthorizationFailedError
from raftka.proto import api_pb2, api_pb2_grpc
from raftka.wire.batch import encode_batch
from waiting import wait_until

ISSUER, AUDIENCE = "https://issuer.test", "raftka"
STATIC = {"static-admin-token": "User:admin", "static-bob-token": "User:bob", "broker-token": "User:broker"}


@pytest.fixture(scope="module")
def signing_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def token(key: rsa.RSAPrivateKey, subject: str, *, kid: str | None = None, **claims: object) -> str:
    now = int(time.time())
    payload = {"sub": subject, "iss": ISSUER, "aud": AUDIENCE, "exp": now + 600, "nbf": now - 5, **claims}
    return jwt.encode(payload, key, algorithm="RS256", headers={"kid": kid} if kid else None)


@pytest.fixture
def secured(start_broker, signing_key, tmp_path):
    public = tmp_path / "jwt.pem"
    public.write_bytes(signing_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                             serialization.PublicFormat.SubjectPublicKeyInfo))
    tokens = tmp_path / "tokens"
    tokens.write_text("# token principal\n" + "".join(f"{t} {p}\n" for t, p in STATIC.items()))
    broker_token = tmp_path / "broker-token"
    broker_token.write_text("broker-token\n")
    return start_broker("--auth-jwt-key", str(public), "--auth-issuer", ISSUER, "--auth-audience", AUDIENCE,
                        "--auth-token-file", str(tokens), "--authorizer", "acl", "--super-users", "User:admin",
                        "--broker-token-file", str(broker_token))


def bearer(value: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {value}"),)


def call(address: str, method: str, request, credentials: str | None):
    with grpc.insecure_channel(address) as channel:
        service = "Groups" if method in ("FindCoordinator", "ListGroups", "DescribeGroup", "DeleteGroup") else (
            "Broker" if method in ("Produce", "Metadata", "ListOffsets") else "Admin")
        stub = getattr(api_pb2_grpc, f"{service}Stub")(channel)
        return getattr(stub, method)(request, timeout=10, metadata=bearer(credentials) if credentials else None)


def refused(address: str, method: str, request, credentials: str | None) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(address, method, request, credentials)
    return caught.value


def topic_names(address: str) -> set[str]:
    return {t.name for t in call(address, "ListTopics", api_pb2.ListTopicsRequest(), "static-admin-token").topics}


def _part(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def forged(algorithm: str, subject: str, secret: bytes = b"") -> str:
    """A token with `alg: none` (no signature) or HS256 "signed" with `secret` (the public key)."""
    claims = {"sub": subject, "iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 600}
    signed = f"{_part({'alg': algorithm, 'typ': 'JWT'})}.{_part(claims)}"
    if algorithm == "none":
        return signed + "."
    mac = hmac.new(secret, signed.encode(), hashlib.sha256).digest()
    return signed + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def test_bad_credentials_are_refused_precisely_and_change_nothing(secured, signing_key):
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = signing_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo)
    cases = {
        "bad signature": (token(other_key, "admin"), "bad signature"),
        "wrong audience": (token(signing_key, "admin", aud="someone-else"), "audience"),
        "wrong issuer": (token(signing_key, "admin", iss="https://evil.test"), "issuer"),
        "expired": (token(signing_key, "admin", exp=int(time.time()) - 3600), "expired"),
        "not yet valid": (token(signing_key, "admin", nbf=int(time.time()) + 3600), "not valid yet"),
        "alg none": (forged("none", "admin"), "algorithm"),
        "HS256 signed with the public key": (forged("HS256", "admin", public_pem), "algorithm"),
        "unknown static token": ("no-such-token", "unknown token"),
        "no token": (None, "authentication required"),
    }
    for case, (credentials, reason) in cases.items():
        error = refused(secured.address, "CreateTopic", api_pb2.CreateTopicRequest(name=f"t-{len(case)}"),
                        credentials)
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED, case
        assert reason in error.details(), (case, error.details())
        assert dict(error.trailing_metadata())["raftka-error-code"] == "AUTHENTICATION_FAILED"
    assert topic_names(secured.address) == set()
    with pytest.raises(grpc.RpcError) as caught, grpc.insecure_channel(secured.address) as channel:
        api_pb2_grpc.AdminStub(channel).ListTopics(api_pb2.ListTopicsRequest(), timeout=10,
                                                   metadata=(("authorization", "Basic YWxpY2U6c2VjcmV0"),))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert call(secured.address, "CreateTopic", api_pb2.CreateTopicRequest(name="made"),
                token(signing_key, "admin")).topic.name == "made"


def test_a_principal_without_acls_is_denied_and_sees_no_topic(secured, signing_key):
    admin = "static-admin-token"
    call(secured.address, "CreateTopic", api_pb2.CreateTopicRequest(name="secret"), admin)
    alice = token(signing_key, "alice")
    error = refused(secured.address, "Produce", api_pb2.ProduceRequest(
        topic="secret", batches=encode_batch([(None, b"x", (), 0)])), alice)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == "User:alice is not authorized to write topic 'secret'"
    assert dict(error.trailing_metadata())["raftka-error-code"] == "AUTHORIZATION_FAILED"
    for name in ("secret", "missing"):
        answer = call(secured.address, "Metadata", api_pb2.MetadataRequest(topics=[name]), alice)
        assert list(answer.unknown_topics) == [name] and not answer.topics
    assert not call(secured.address, "Metadata", api_pb2.MetadataRequest(), alice).topics
    assert not call(secured.address, "ListTopics", api_pb2.ListTopicsRequest(), alice).topics
    denied = [refused(secured.address, "DescribeTopic", api_pb2.DescribeTopicRequest(name=n), alice).details()
              for n in ("secret", "missing")]
    assert denied == ["User:alice is not authorized to describe topic 'secret'",
                      "User:alice is not authorized to describe topic 'missing'"]
    assert refused(secured.address, "DeleteTopic", api_pb2.DeleteTopicRequest(name="secret"),
                   alice).code() == grpc.StatusCode.PERMISSION_DENIED
    assert refused(secured.address, "CreateAcls", api_pb2.CreateAclsRequest(acls=[AclEntry(
        "User:alice", "topic", "*", "all").to_proto()]), alice).code() == grpc.StatusCode.PERMISSION_DENIED
    assert topic_names(secured.address) == {"secret"}
    assert not call(secured.address, "ListAcls", api_pb2.ListAclsRequest(), admin).acls


def test_malformed_acl_commands_are_invalid_and_change_nothing(secured):
    admin = "static-admin-token"
    good = AclEntry("User:bob", "topic", "t", "read").to_proto()
    bad = {
        "no operation": api_pb2.AclBinding(principal="User:bob", resource_type=api_pb2.RESOURCE_TYPE_TOPIC, name="t",
                                           pattern_type=api_pb2.PATTERN_TYPE_LITERAL,
                                           permission=api_pb2.ACL_PERMISSION_ALLOW),
        "principal without type": AclEntry("bob", "topic", "t", "read").to_proto(),
        "topic without a name": AclEntry("User:bob", "topic", "", "read").to_proto(),
        "cluster with a name": AclEntry("User:bob", "cluster", "x", "alter").to_proto(),
        "unknown permission": api_pb2.AclBinding(principal="User:bob", resource_type=api_pb2.RESOURCE_TYPE_TOPIC,
                                                 name="t", pattern_type=api_pb2.PATTERN_TYPE_LITERAL,
                                                 operation=api_pb2.ACL_OPERATION_READ, permission=7),
    }
    for case, binding in bad.items():
        error = refused(secured.address, "CreateAcls", api_pb2.CreateAclsRequest(acls=[good, binding]), admin)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, case
        assert "ACL" in error.details() or "acl" in error.details(), (case, error.details())
    assert refused(secured.address, "CreateAcls", api_pb2.CreateAclsRequest(), admin).code() == \
        grpc.StatusCode.INVALID_ARGUMENT
    assert not call(secured.address, "ListAcls", api_pb2.ListAclsRequest(), admin).acls


def test_principals_by_operations_behave_as_the_acls_say(secured, signing_key):
    with Admin(secured.address, token="static-admin-token") as admin:
        for name in ("orders-eu", "orders-us", "payments"):
            admin.create_topic(name)
        admin.add_acls([
            AclEntry("User:alice", "topic", "orders-", "all", pattern="prefixed"),
            AclEntry("User:alice", "topic", "orders-us", "delete", permission="deny"),
            AclEntry("User:bob", "topic", "orders-eu", "read"),
            AclEntry("User:bob", "group", "bob-", "read", pattern="prefixed"),
            AclEntry("*", "topic", "payments", "describe"),
            AclEntry("User:carol", "cluster", "", "alter"),
        ])
    alice, bob, carol = token(signing_key, "alice"), "static-bob-token", token(signing_key, "carol")
    batch = encode_batch([(None, b"v", (), 0)])
    requests = {
        "write orders-eu": ("Produce", api_pb2.ProduceRequest(topic="orders-eu", batches=batch)),
        "write payments": ("Produce", api_pb2.ProduceRequest(topic="payments", batches=batch)),
        "describe orders-eu": ("DescribeTopic", api_pb2.DescribeTopicRequest(name="orders-eu")),
        "describe payments": ("DescribeTopic", api_pb2.DescribeTopicRequest(name="payments")),
        "offsets orders-eu": ("ListOffsets", api_pb2.ListOffsetsRequest(queries=[api_pb2.OffsetQuery(
            topic="orders-eu", spec=api_pb2.LATEST)])),
        "create orders-new": ("CreateTopic", api_pb2.CreateTopicRequest(name="orders-new")),
        "delete orders-us": ("DeleteTopic", api_pb2.DeleteTopicRequest(name="orders-us")),
        "find bob-group": ("FindCoordinator", api_pb2.FindCoordinatorRequest(group_id="bob-group")),
        "elect leaders": ("ElectPreferredLeaders", api_pb2.ElectPreferredLeadersRequest()),
        "describe cluster": ("DescribeCluster", api_pb2.DescribeClusterRequest()),
    }
    expected = {
        alice: {"write orders-eu", "describe orders-eu", "describe payments", "offsets orders-eu",
                "create orders-new"},
        bob: {"describe orders-eu", "describe payments", "offsets orders-eu", "find bob-group"},
        carol: {"describe payments", "elect leaders", "describe cluster"},
    }
    for who, allowed in expected.items():
        outcome = set()
        for what, (method, request) in requests.items():
            try:
                call(secured.address, method, request, who)
                outcome.add(what)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.PERMISSION_DENIED, (who, what, exc.details())
        assert outcome == allowed, (who[:20], outcome ^ allowed)
    listed = {t.name for t in call(secured.address, "Metadata", api_pb2.MetadataRequest(), bob).topics}
    assert listed == {"orders-eu", "payments"}
    with Admin(secured.address, token="static-admin-token") as admin:
        assert {t.name for t in admin.list_topics()} == {"orders-eu", "orders-us", "orders-new", "payments"}
        removed = admin.remove_acls([AclEntry("User:alice", "topic", "orders-us", "delete", permission="deny"),
                                     AclEntry("User:nobody", "topic", "x", "read")])
        assert removed == [AclEntry("User:alice", "topic", "orders-us", "delete", permission="deny")]
    call(secured.address, "DeleteTopic", api_pb2.DeleteTopicRequest(name="orders-us"), alice)


def test_clients_send_tokens_and_refusals_arrive_typed(secured, signing_key, tmp_path):
    with Admin(secured.address, token="static-admin-token") as admin:
        admin.create_topic("events")
        admin.add_acls([AclEntry("User:alice", "topic", "events", "write"),
                        AclEntry("User:alice", "topic", "events", "read")])
    alice = token(signing_key, "alice")
    calls = []

    def provider() -> str:
        calls.append(1)
        return alice

    with Producer(secured.address, token_provider=provider) as producer:
        for i in range(10):
            producer.send("events", f"v{i}", partition=0).result(timeout=30)
    assert calls
    token_file = tmp_path / "alice.token"
    token_file.write_text(alice + "\n")
    with Consumer(secured.address, token_file=token_file, auto_offset_reset="earliest") as consumer:
        consumer.assign([("events", 0)])
        seen: list[bytes] = []
        deadline = time.monotonic() + 30
        while len(seen) < 10 and time.monotonic() < deadline:
            seen.extend(r.value for r in consumer.poll(timeout_ms=500))
    assert seen == [f"v{i}".encode() for i in range(10)]
    with Admin(secured.address, token=alice) as admin, pytest.raises(AuthorizationFailedError):
        admin.delete_topic("events")
    with Admin(secured.address, token="wrong") as admin, pytest.raises(AuthenticationFailedError,
                                                                        match="unknown token"):
        admin.list_topics()


def test_cli_manages_acls_with_a_token_file(secured, tmp_path):
    token_file = tmp_path / "admin.token"
    token_file.write_text("static-admin-token\n")
    env = {**os.environ, "RAFTKA_BOOTSTRAP": secured.address, "RAFTKA_TOKEN_FILE": str(token_file)}

    cli = partial(raftka, env=env)

    added = cli("acl", "add", "--principal", "User:bob", "--topic", "logs-", "--prefixed", "--operation", "read")
    assert added.returncode == 0, added.stderr
    listed = cli("acl", "list", "--format", "json")
    assert json.loads(listed.stdout) == [{"principal": "User:bob", "resource": "topic", "name": "logs-",
                                          "operation": "read", "permission": "allow", "pattern": "prefixed"}]
    quota = cli("quota", "set", "User:bob", "--produce-rate", "1MB/s")
    assert quota.returncode == 0, quota.stderr
    assert json.loads(cli("quota", "list", "--format", "json").stdout)[0]["produce_bytes_per_s"] == 1_000_000
    without = subprocess.run([sys.executable, "-m", "raftka", "acl", "list"], capture_output=True, text=True,
                             env={**env, "RAFTKA_TOKEN_FILE": ""}, timeout=60)
    assert without.returncode == 1 and "AuthenticationFailedError" in without.stderr


def jwks(**keys: rsa.RSAPrivateKey) -> str:
    """A JWKS document of the public halves of `keys`, by kid."""
    return json.dumps({"keys": [{**json.loads(RSAAlgorithm.to_jwk(key.public_key())), "kid": kid, "use": "sig"}
                                for kid, key in keys.items()]})


def replace_file(path, text: str) -> None:
    """Replace a file whole, as a rotating Secret or sidecar does."""
    staged = path.with_name(path.name + ".new")
    staged.write_text(text)
    os.replace(staged, path)


def test_jwks_and_token_files_are_read_again_when_they_change(start_broker, signing_key, tmp_path):
    """Keys and tokens rotate without a restart: the JWKS's new key's tokens get in and the removed key's
    stop; a token added to the token file works and a removed one fails; a replacement that cannot be
    parsed is logged and leaves the previous content in force."""
    rotated = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    keys_file, tokens = tmp_path / "jwks.json", tmp_path / "tokens"
    keys_file.write_text(jwks(one=signing_key))
    tokens.write_text("first-token User:admin\n")
    broker = start_broker("--auth-jwks", str(keys_file), "--auth-issuer", ISSUER, "--auth-audience", AUDIENCE,
                          "--auth-token-file", str(tokens))

    def accepted(credentials: str) -> bool:
        try:
            call(broker.address, "ListTopics", api_pb2.ListTopicsRequest(), credentials)
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error.details()
            return False
        return True

    old, new = token(signing_key, "alice", kid="one"), token(rotated, "alice", kid="two")
    assert (accepted(old), accepted(new), accepted("first-token"), accepted("second-token")) == (
        True, False, True, False)
    replace_file(keys_file, jwks(two=rotated))
    replace_file(tokens, "second-token User:admin\n")
    wait_until(lambda: accepted(new) and accepted("second-token"), "the rotated key and token are taken", 30)
    assert not accepted(old) and not accepted("first-token")
    replace_file(keys_file, "{not json")
    replace_file(tokens, "a-line-without-principal\n")
    wait_until(lambda: broker.log().count("auth file reload failed") >= 2, "both bad files are refused", 30)
    assert accepted(new) and accepted("second-token")
