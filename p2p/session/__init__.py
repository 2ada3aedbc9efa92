"""The trio session adapters: encrypted TCP sessions, the in-process one, and the client's pool.

- `secure.py` — `connect` / `serve_sessions`: the thin trio loop around the sans-IO Noise
  handshake and frames of `crypto/`, `SecureConnection`, `HandshakeAdmission` (what a
  stranger's unfinished handshakes may cost), and the established-session bounds applied through
  `p2p.protocol.session_table.SessionTable` (each session under a cancel scope whose deadline the
  table sets; `NODE_DESCRIPTOR_BOUND`).
- `handshake_admission.py` — `HandshakeAdmission` and `SessionLimits`, sans-IO (re-exported by
  `secure.py`); `serve_sessions(preamble=...)` hands connections that open with the relay
  preamble to p2p/reach/ instead of the handshake.
- `observers.py` — who a node talks to: `DIAL_OBSERVER` (every outbound TCP host) and
  `observing_accepts` (every inbound connection's source), for p2p/reach/strangers.py.
- `local.py` — the `Connection` protocol and `LocalConnection`: a node's own gateway reaching the
  node in-process, without a handshake or a socket.
- `pool.py` — `MultiplexedSession` (the trio loop around
  `p2p.protocol.requests_client.RequestClient`), `SessionPool` (one session per peer, reused,
  reached by racing the record's addresses, then its relays), and `staggered_race`, happy
  eyeballs' shape (RFC 8305) for addresses and providers alike.
- `punch_gate.py` — the first request on a fresh relayed session waits for the hole punch, long
  only when the punch is predicted to work (p2p/reach/punch_odds.py).
"""
