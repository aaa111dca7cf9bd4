"""Access control of the public services: who calls (authentication), whether they may (ACLs), and
how fast (quotas), applied to every call by the request wrapper (`raftka.cluster.handlers`).

`REQUIRED` is the table of what each RPC needs (the README's "Security" section repeats it): a list of
(resource type, resource name, operation) per request, every one of which must be allowed. A name of
None means "some resource of the type" (`Authorizer.allowed_on_some`). Calls that list things
(Metadata, ListTopics, ListGroups) need nothing here: they leave out what the caller may not
describe, and a topic named in a Metadata request that the caller may not describe is reported
unknown, exactly as a topic that does not exist, so nothing is revealed about it.

Invariants: every call of a registered public service is authenticated, and its client id
(`raftka-client-id` metadata, `raftka.wire.headers`) checked, before its handler runs; a request
(each item of a request stream) is authorized before it is handled; the caller (principal and client
id) is `caller()` for the whole call; a caller over quota has its next request held (`hold`) before
it is handled.
"""

from __future__ import annotations

import contextvars
import logging
from typing import Any, Callable, Iterable

import grpc

from raftka.cluster.authentication import ANONYMOUS, Authentication, Principal
from raftka.cluster.authorizer import Authorizer
from raftka.cluster.metrics import BrokerMetrics
from raftka.cluster.quotas import REQUESTS, Caller, QuotaManager
from raftka.wire.acl import ALTER, CLUSTER, CLUSTER_ADMIN, CREATE, DELETE, DESCRIBE, GROUP, READ, TOPIC, WRITE
from raftka.wire.headers import CLIENT_ID_HEADER, client_id_problem
from raftka.errors import AuthenticationFailedError, AuthorizationFailedError, InvalidRequestError

log = logging.getLogger(__name__)

Check = tuple[str, "str | None", str]

_ANONYMOUS_CALLER = Caller(ANONYMOUS)
_CALLER: contextvars.ContextVar[Caller] = contextvars.ContextVar("raftka_caller", default=_ANONYMOUS_CALLER)


def caller() -> Caller:
    """The principal and client id of the call being served."""
    return _CALLER.get()


def client_id_of(context: grpc.aio.ServicerContext) -> str:
    """The call's client id ("" without one); InvalidRequestError for a bad one or more than one."""
    values = [value.decode("latin-1") if isinstance(value, bytes) else value
              for key, value in context.invocation_metadata() or () if key == CLIENT_ID_HEADER]
    if len(values) > 1:
        raise InvalidRequestError(f"a call carries at most one {CLIENT_ID_HEADER} metadata entry, not {len(values)}")
    problem = client_id_problem(values[0]) if values else None
    if problem is not None:
        raise InvalidRequestError(f"bad {CLIENT_ID_HEADER} metadata: {problem}")
    return values[0] if values else ""


def _topics(operation: str, names: Iterable[str]) -> list[Check]:
    return [(TOPIC, name, operation) for name in dict.fromkeys(names)]


def _cluster(operation: str) -> Callable[[Any], list[Check]]:
    return lambda request: [(CLUSTER, "", operation)]


def _group(operation: str) -> Callable[[Any], list[Check]]:
    return lambda request: [(GROUP, request.group_id, operation)]


def _nothing(request: Any) -> list[Check]:
    return []


REQUIRED: dict[str, Callable[[Any], list[Check]]] = {
    "Broker.Produce": lambda r: _topics(WRITE, [r.topic]),
    "Broker.ProduceStream": lambda r: _topics(WRITE, [r.topic]),
    "Broker.Fetch": lambda r: _topics(READ, (p.topic for p in r.partitions)),
    "Broker.FetchStream": lambda r: _topics(READ, (p.topic for p in r.partitions)),
    "Broker.ListOffsets": lambda r: _topics(DESCRIBE, (q.topic for q in r.queries)),
    "Broker.Metadata": _nothing,
    "Admin.CreateTopic": lambda r: _topics(CREATE, [r.name]),
    "Admin.DeleteTopic": lambda r: _topics(DELETE, [r.name]),
    "Admin.ListTopics": _nothing,
    "Admin.DescribeTopic": lambda r: _topics(DESCRIBE, [r.name]),
    "Admin.ElectPreferredLeaders": _cluster(ALTER),
    "Admin.RegisterBroker": _cluster(CLUSTER_ADMIN),
    "Admin.InitProducerId": lambda r: [(TOPIC, None, WRITE)],
    "Admin.DescribeCluster": _cluster(DESCRIBE),
    "Admin.ChangeControllers": _cluster(CLUSTER_ADMIN),
    "Admin.DrainBroker": _cluster(CLUSTER_ADMIN),
    "Admin.ReassignPartitions": _cluster(ALTER),
    "Admin.CancelReassignments": _cluster(ALTER),
    "Admin.ListReassignments": _cluster(DESCRIBE),
    "Admin.PlanBalance": _cluster(DESCRIBE),
    "Admin.CompletePartitionMove": _cluster(CLUSTER_ADMIN),
    "Admin.CreateAcls": _cluster(ALTER),
    "Admin.ListAcls": _cluster(DESCRIBE),
    "Admin.DeleteAcls": _cluster(ALTER),
    "Admin.SetQuota": _cluster(ALTER),
    "Admin.ListQuotas": _cluster(DESCRIBE),
    "Admin.RemoveQuota": _cluster(ALTER),
    "Admin.AlterTopicConfig": lambda r: _topics(ALTER, [r.name]),
    "Admin.DescribeTopicConfig": lambda r: _topics(DESCRIBE, [r.name]),
    "Admin.CreatePartitions": lambda r: _topics(ALTER, [r.name]),
    "Admin.DeleteRecords": lambda r: _topics(DELETE, [r.topic]),
    "Admin.AdvanceLogStart": _cluster(CLUSTER_ADMIN),
    "Groups.FindCoordinator": _group(DESCRIBE),
    "Groups.Heartbeat": _group(READ),
    "Groups.CommitOffsets": lambda r: [(GROUP, r.group_id, READ), *_topics(READ, (o.topic for o in r.offsets))],
    "Groups.FetchOffsets": lambda r: [(GROUP, r.group_id, DESCRIBE),
                                      *_topics(DESCRIBE, (p.topic for p in r.partitions))],
    "Groups.ListGroups": _nothing,
    "Groups.DescribeGroup": _group(DESCRIBE),
    "Groups.DeleteGroup": _group(DELETE),
}


class Access:
    def __init__(self, authentication: Authentication, authorizer: Authorizer, quotas: QuotaManager,
                 metrics: BrokerMetrics | None = None) -> None:
        self.authentication = authentication
        self.authorizer = authorizer
        self.quotas = quotas
        self._metrics = metrics

    def enter(self, context: grpc.aio.ServicerContext) -> Caller:
        """Authenticate the call, read its client id, and make both `caller()` for the rest of it."""
        try:
            principal = self.authentication.principal_of(context)
        except AuthenticationFailedError as exc:
            self._refused("unauthenticated")
            log.info("call refused: unauthenticated peer=%s reason=%r", context.peer(), exc.message)
            raise
        try:
            who = Caller(principal, client_id_of(context))
        except InvalidRequestError as exc:
            log.info("call refused: bad client id peer=%s principal=%s reason=%r", context.peer(), principal,
                     exc.message)
            raise
        _CALLER.set(who)
        return who

    def authorize(self, method: str, request: Any, principal: Principal) -> None:
        """Raises AuthorizationFailedError unless every operation `method` needs on `request` is allowed."""
        for resource, name, operation in REQUIRED[method](request):
            if name is None:
                if self.authorizer.allowed_on_some(principal, resource, operation):
                    continue
                what = f"{operation} any {resource}"
            elif self.authorizer.allowed(principal, resource, name, operation):
                continue
            else:
                what = f"{operation} cluster" if resource == CLUSTER else f"{operation} {resource} {name!r}"
            self._refused("unauthorized")
            log.info("call refused: not authorized principal=%s method=%s need=%r", principal, method, what)
            raise AuthorizationFailedError(f"{principal} is not authorized to {what}")

    async def admit(self, method: str, request: Any, who: Caller) -> None:
        """Authorize one request, then hold it while its caller is throttled and count it."""
        self.authorize(method, request, who.principal)
        await self.quotas.hold(who)
        self.quotas.charge(who, REQUESTS, 1)

    def may(self, resource: str, name: str, operation: str) -> bool:
        """Whether the current caller may (for calls that leave out what it may not see)."""
        return self.authorizer.allowed(caller().principal, resource, name, operation)

    def _refused(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.access_refusals.labels(reason).inc()


def open_access(quotas: QuotaManager | None = None) -> Access:
    """No authentication, no authorization: every caller is ANONYMOUS and may do everything."""
    return Access(Authentication((), allow_anonymous=True), Authorizer(lambda: (0, ())),
                  quotas or QuotaManager(lambda who, kind: None))

