"""The bench's HTTP/1.1 load client against a tiny local server (loopback, no mocks)."""

import asyncio

import pytest

from bench.pipeline import LoadClient

pytestmark = pytest.mark.integration


async def _server(close_after_each: bool):
    """Answers every request 201 with a JSON body; counts connections and requests."""
    seen = {"connections": 0, "requests": 0}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen["connections"] += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length"))
                await reader.readexactly(length)
                seen["requests"] += 1
                body = b'{"ok":true}'
                writer.write(b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
                if close_after_each:  # like a keep-alive timeout expiring while idle
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], seen


async def test_requests_reuse_one_keep_alive_connection():
    server, port, seen = await _server(close_after_each=False)
    async with server:
        client = LoadClient("127.0.0.1", port)
        for _ in range(5):
            assert await client.post_json("/payments", {"a": 1}) == (201, b'{"ok":true}')
        await client.aclose()
    assert seen == {"connections": 1, "requests": 5}


async def test_a_request_on_a_connection_the_server_closed_is_sent_again_on_a_new_one():
    server, port, seen = await _server(close_after_each=True)
    async with server:
        client = LoadClient("127.0.0.1", port)
        assert (await client.post_json("/payments", {}))[0] == 201
        await asyncio.sleep(0.05)  # let the server's close reach us: the pooled one is dead
        assert (await client.post_json("/payments", {}))[0] == 201
        await client.aclose()
    assert seen == {"connections": 2, "requests": 2}
