"""The trio session adapters: encrypted TCP sessions, the in-process one, and the client's pool.

- `secure.py` — `connect` / `serve_sessions`: the thin trio loop around the sans-IO Noise
  handshake and frames of `crypto/`, `SecureConnection`, `HandshakeAdmission` (what a
  stranger's unfinished handshakes may cost), and the established-session bounds applied through
  `p2p.protocol.session_table.SessionTable` (each session under a cancel scope whose deadline the
  table sets; `NODE_DESCRIPTOR_BOUND`).
- `local.py` — the `Connection` protocol and `LocalConnection`: a node's own gateway reaching the
  node in-process, without a handshake or a socket.
- `pool.py` — `MultiplexedSession` (the trio loop around
  `p2p.protocol.requests_client.RequestClient`), `SessionPool` (one session per peer, reused,
  reached by racing the record's addresses), and `staggered_race`, happy eyeballs' shape (RFC
  8305) for addresses and providers alike.
"""
