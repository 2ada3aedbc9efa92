"""The trio session adapters: encrypted TCP sessions, the in-process one, and the client's pool.

- `secure.py` — `connect` / `serve_sessions`: the thin trio loop around the sans-IO Noise
  handshake and frames of `crypto/`, `SecureConnection`, and `HandshakeAdmission` (what a
  stranger's unfinished handshakes may cost).
- `local.py` — the `Connection` protocol and `LocalConnection`: a node's own gateway reaching the
  node in-process, without a handshake or a socket.
- `pool.py` — `MultiplexedSession` (the trio loop around
  `p2p.protocol.requests_client.RequestClient`) and `SessionPool` (one session per peer, reused).
"""
