"""What the client and the broker agree on, below both of them.

The record-batch format (`batch`), the partitioning rule (`partitioning`: a keyed record's partition,
and a consumer group's `__consumer_offsets` partition), the value types both sides pass around
(`structs`), the settings both parse the same way (`settings`: HOST:PORT addresses, RAFTKA_*
variables), the gRPC metadata a call carries (`headers`: the bearer token and the client id) and
Kafka's partition reassignment JSON (`reassignment`). Neither side imports the other
(`raftka.client` never imports `raftka.cluster`, nor the reverse); each imports this package, which
imports only `raftka.errors` and `raftka.proto`.
"""
