"""How others reach this node behind a NAT: reachability checks, port mapping, relays.

docs/reachability.md describes the design; the files:

- `relay_protocol.py` (sans-IO): the relay preamble that shares the session port with Noise, the
  status line, the control messages (reserve, circuit, dial-back) and their readers.
- `relay_table.py` (sans-IO): the relay's reservations, pending and live circuits, their bounds
  and deadlines, and the per-peer byte budget.
- `reachability.py` (sans-IO): the dial-back limits of a helper and the verdict
  (direct / mapped / relayed) from dial-back outcomes.
- `relay_service.py` (trio): the session port's relay side: control sessions, the splice, probes.
- `relay_client.py` (trio): a client's dial through a relay, a volunteer's reservation.
- `dial_back.py` (trio): asking for and serving dial-backs.
- `strangers.py` (sans-IO): the hosts a node sent to, and when an inbound connection proves
  that strangers reach it (a dial-back from a contacted helper is only weak proof).
- `state.py`: what the node knows of its reachability; changes trigger a republish.
- `node_tasks.py` (trio): the node's reach tasks (check, keep relays) and their wiring.
- `port_mapping.py` (trio): UPnP-IGD port mappings on the home router, and the mapping record
  and claim both protocols share.
- `natpmp.py` (sans-IO): NAT-PMP (RFC 6886) requests, strict readers of the gateway's answers,
  the retransmission schedule, the epoch rule, the default gateway from the route table.
- `pcp.py` (sans-IO): PCP (RFC 6887) MAP and ANNOUNCE requests and strict readers of answers.
- `natpmp_client.py` (trio): NAT-PMP and PCP port mappings through the default gateway.
- `mapping_race.py` (trio): the node's port mapping: UPnP and NAT-PMP at once (PCP where
  NAT-PMP is not spoken), the first that is ready holds the router.
- `punch_rules.py` (sans-IO): when each side of a hole punch tries, a volunteer's punch budget,
  and the names of the paths a session takes (direct / mapped / hole-punched / relayed).
- `hole_punch.py` (trio): upgrading a relayed session to a direct one by a TCP simultaneous
  open from the relay connections' ports (DCUtR's shape).
- `port_spray.py` (sans-IO): the port spray between a symmetric NAT and a port-restricted one
  (who opens, who sprays, how many, its targets and budget); `spray.py` (trio) runs it.
- `punch_odds.py` (sans-IO): whether a punch between two ends is likely to work, from what the
  relay saw of both, and a bounded memory of earlier punches' outcomes.
"""
