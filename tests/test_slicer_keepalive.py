"""The Slicer client keeps its HTTP connections alive, and recovers when the server has closed one.

A real HTTP/1.1 server on 127.0.0.1 (the standard library's, so the test controls when it hangs up);
the full MONAI Label path is covered in test_slicer_server.py and test_slicer_orthofm_server.py.
"""

from __future__ import annotations

import http.server
import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "slicer_extension" / "OrthoFM"))

from OrthoFMLib import OrthoFMClient
from OrthoFMLib import client as client_module


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive unless told otherwise

    def log_message(self, *args: object) -> None:
        pass

    def _reply(self, payload: dict) -> None:
        # recorded before replying: the client may read the list as soon as it has the reply
        self.server.requests.append((self.client_address[1], self.path))  # type: ignore[attr-defined]
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        if self.server.hang_up_after_reply:  # type: ignore[attr-defined]
            self.close_connection = True  # closes without announcing it, like a keep-alive timeout

    def do_GET(self) -> None:
        self._reply({"name": "keepalive-test", "models": {}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        data = self.rfile.read(length)
        self._reply({"received": len(data)})


@pytest.fixture
def http_server() -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.requests = []  # type: ignore[attr-defined]
    server.hang_up_after_reply = False  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _client(server: http.server.ThreadingHTTPServer) -> OrthoFMClient:
    host, port = server.server_address[:2]
    return OrthoFMClient(f"http://{host}:{port}", timeout=10)


def test_calls_reuse_one_connection(http_server) -> None:
    client = _client(http_server)
    for _ in range(3):
        client._json("GET", "/info/", what="reading /info/")
    upload = client._request("POST", "/infer/x", body=b"x" * 100_000, what="uploading")
    assert json.loads(upload.body) == {"received": 100_000}
    ports = {port for port, _ in http_server.requests}
    assert len(http_server.requests) == 4 and len(ports) == 1  # one TCP connection for all four
    client.close()
    assert client._idle == []


def test_a_connection_the_server_closed_is_replaced(http_server) -> None:
    http_server.hang_up_after_reply = True
    client = _client(http_server)
    for _ in range(3):
        assert client._json("GET", "/info/", what="reading /info/")["name"] == "keepalive-test"
    ports = [port for port, _ in http_server.requests]
    assert len(ports) == 3 and len(set(ports)) == 3  # each call found the old one closed and opened anew


def test_a_send_on_a_dead_connection_is_retried_once_on_a_fresh_one(http_server, monkeypatch) -> None:
    """The race the liveness check cannot see (closed between check and send) ends in one retry."""
    http_server.hang_up_after_reply = True
    client = _client(http_server)
    client._json("GET", "/info/", what="reading /info/")
    dead = client._idle[0]
    threading.Event().wait(0.2)  # the server's FIN has arrived
    monkeypatch.setattr(client_module, "_still_open", lambda conn: True)
    reply = client._request("POST", "/infer/x", body=b"y" * 1000, what="uploading")
    assert json.loads(reply.body) == {"received": 1000}
    assert dead.sock is None  # the dead one was closed, not kept
    assert [path for _, path in http_server.requests] == ["/info/", "/infer/x"]  # nothing was sent twice
