"""A client and a server request machine joined by an in-memory link (h11's ConnectionPair).

No sockets, no event loop: `client_sends` / `server_sends` put messages on the link, and each
side's `deliver` hands them to the other machine, collecting what it reports. Both machines' own
replies (pongs, refusals, cancels) travel back the same way.
"""

from __future__ import annotations

from p2p.protocol import wire
from p2p.protocol.request_events import ClientEvent, ServerEvent
from p2p.protocol.requests_client import RequestClient
from p2p.protocol.requests_server import RequestServer


class Pair:
    def __init__(self, max_requests: int = 64) -> None:
        self.client = RequestClient()
        self.server = RequestServer(max_requests)
        self.to_server: list[wire.Received] = []
        self.to_client: list[wire.Received] = []

    # --- the client side -------------------------------------------------------------------
    def start(self, prompt: str = "p") -> int:
        msg = self.client.start(wire.Generate(0, "m", prompt))
        self.to_server.append(msg)
        return msg.id

    def close(self, request_id: int) -> None:
        cancel = self.client.close(request_id)
        if cancel is not None:
            self.to_server.append(cancel)

    def client_receives(self) -> list[ClientEvent]:
        events = []
        while self.to_client:
            event = self.client.receive(self.to_client.pop(0))
            if event is not None:
                events.append(event)
        self.to_server.extend(self.client.take_outgoing())
        return events

    # --- the server side -------------------------------------------------------------------
    def server_receives(self) -> list[ServerEvent]:
        events = []
        while self.to_server:
            event = self.server.receive(self.to_server.pop(0))
            self.to_client.extend(self.server.take_outgoing())
            if event is not None:
                events.append(event)
        return events

    def server_sends(self, msg: wire.Token | wire.Done | wire.Error) -> bool:
        """Put an answer on the link; False when the machine dropped it."""
        out = self.server.send(msg)
        if out is None:
            return False
        self.to_client.append(out)
        return True


def done(request_id: int) -> wire.Done:
    return wire.Done(request_id, "length", 1, 1, 0.01, 10.0)
