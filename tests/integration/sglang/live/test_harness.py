"""The live harness relaunches a server whose port another process took while it started."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

from tests.integration.sglang.live.harness import LiveServer, ServerSpec, stop_all

# First launch: behave like SGLang when its port was taken (log the bind error, exit 3).
# Second launch: answer /health on the port it was given.
FAKE_SERVER = textwrap.dedent(
    """
    import http.server, pathlib, sys
    port, marker = int(sys.argv[1]), pathlib.Path(sys.argv[2])
    if not marker.exists():
        marker.write_text("launched")
        print(f"ERROR:    [Errno 98] error while attempting to bind on address "
              f"('127.0.0.1', {port}): address already in use", flush=True)
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
        return [sys.executable, "-c", FAKE_SERVER, str(port), str(self.model)]


def test_a_server_that_lost_its_port_is_relaunched_on_another(tmp_path: Path):
    server = LiveServer(FakeSpec("fake", tmp_path / "marker", []), tmp_path)
    try:
        server.wait_ready(timeout_s=60)
        assert server.port_clashes == 1
        assert server.proc.poll() is None  # the relaunch is the one serving
        assert "address already in use" in server.log()  # the first attempt's log is kept
    finally:
        stop_all([server])
