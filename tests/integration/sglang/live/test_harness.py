"""The live harness relaunches a server whose port another process took while it started."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from tests.integration.sglang.live.harness import LiveServer, ServerSpec, ServerStartError, stop_all

# What SGLang logs when its HTTP port was taken, and when its scheduler's rendezvous
# port (``nccl_port``, which SGLang picks itself) was.
HTTP_PORT_TAKEN = (
    "ERROR:    [Errno 98] error while attempting to bind on address "
    "('127.0.0.1', {port}): address already in use"
)
RENDEZVOUS_PORT_TAKEN = (
    "torch.distributed.DistNetworkError: The server socket has failed to listen on any "
    "local network address. port: 26408, useIpv6: false, code: -98, name: EADDRINUSE, "
    "message: address already in use"
)

# The first ``len(failures)`` launches log one failure each and exit 3; the next one
# answers /health on the port it was given.
FAKE_SERVER = textwrap.dedent(
    """
    import http.server, json, pathlib, sys
    port, marker, failures = int(sys.argv[1]), pathlib.Path(sys.argv[2]), json.loads(sys.argv[3])
    launch = int(marker.read_text()) if marker.exists() else 0
    marker.write_text(str(launch + 1))
    if launch < len(failures):
        print(failures[launch].format(port=port), flush=True)
        sys.exit(3)
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
    http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
    """
)


class FakeSpec(ServerSpec):
    def argv(self, port: int) -> list[str]:
        failures = json.dumps(self.sglang_args)
        return [sys.executable, "-c", FAKE_SERVER, str(port), str(self.model), failures]


def launched(tmp_path: Path, failures: list[str]) -> LiveServer:
    return LiveServer(FakeSpec("fake", tmp_path / "marker", failures), tmp_path)


@pytest.mark.parametrize("taken", [HTTP_PORT_TAKEN, RENDEZVOUS_PORT_TAKEN], ids=["http", "nccl"])
def test_a_server_that_lost_a_port_is_relaunched(tmp_path: Path, taken: str):
    server = launched(tmp_path, [taken])
    try:
        server.wait_ready(timeout_s=60)
        assert server.port_clashes == 1
        assert server.proc.poll() is None  # the relaunch is the one serving
        assert "address already in use" in server.log()  # the first attempt's log is kept
    finally:
        stop_all([server])


def test_a_relaunch_that_fails_otherwise_is_reported_not_retried(tmp_path: Path):
    # The first launch's port clash stays in the log; the second launch's failure is its own.
    server = launched(tmp_path, [RENDEZVOUS_PORT_TAKEN, "RuntimeError: no weights", "unused"])
    try:
        with pytest.raises(ServerStartError, match="exited with code 3") as failure:
            server.wait_ready(timeout_s=60)
        assert server.port_clashes == 1
        assert "no weights" in str(failure.value)
    finally:
        stop_all([server])


def test_port_clashes_are_retried_a_bounded_number_of_times(tmp_path: Path):
    server = launched(tmp_path, [HTTP_PORT_TAKEN] * (LiveServer.PORT_RETRIES + 1))
    try:
        with pytest.raises(ServerStartError, match="exited with code 3"):
            server.wait_ready(timeout_s=60)
        assert server.port_clashes == LiveServer.PORT_RETRIES
    finally:
        stop_all([server])
