"""The v1 gRPC API (`api.proto`, `raft.proto`) and the code generated from it (`scripts/gen-proto`).

`NO_LEADER` is the API's broker id for "no leader known" (`PartitionMetadata.leader_id`, the
NOT_LEADER error's leader hint). Everything above the Raft core speaks it: a replica's `leader_id`,
the controller's, the coordinator a broker names. Only the Raft core (`raftka.replication.raft`) says
0 for "no node", as etcd/raft does; `RaftReplica.leader_id` is where the one becomes the other. Test
it by name (`== NO_LEADER`), never by sign.
"""

NO_LEADER = -1
