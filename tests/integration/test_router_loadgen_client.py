"""The benchmark's raw HTTP client honours ``Connection: close``: it never sends on a connection the server said it
would close (the router recycles a kept-alive connection after ``--max-requests-per-connection`` answers), so a
benchmark's failures are the server's, not the client's race with that close."""

from __future__ import annotations

import asyncio

from paretoserve.research.benchmarks.router_loadgen import Client

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"


class ClosingServer(asyncio.Protocol):
    """Answers one request per connection with ``Connection: close``; a second request on the same connection
    (a client that ignored the header) gets no answer: the connection is closed under it."""

    connections = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ClosingServer.connections += 1
        self.transport = transport
        self.answered = False

    def data_received(self, data: bytes) -> None:
        assert isinstance(self.transport, asyncio.Transport)
        if self.answered:
            self.transport.close()
        elif b"\r\n\r\n" in data:
            self.answered = True
            self.transport.write(ANSWER)


async def test_a_connection_the_server_will_close_is_not_reused() -> None:
    ClosingServer.connections = 0
    server = await asyncio.get_running_loop().create_server(ClosingServer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        client = Client(f"http://127.0.0.1:{port}/v2/models/m/infer", [b"{}"])
        await client.warm(1)
        statuses = [(await client.send(index))[0] for index in range(5)]
    finally:
        server.close()
        await server.wait_closed()
    assert statuses == [200] * 5
    assert ClosingServer.connections == 5 and client.idle == []
