"""Start, poll and stop real SGLang 0.5.23 servers on 127.0.0.1 for the live tests.

A server is launched through ``moe-spec serve`` (or, for the non-speculative
reference, SGLang's own launcher), in a new session so that one ``killpg`` of its
process group stops the launcher, the HTTP server and every rank. What SGLang
needs to run on a CPU without sgl-kernel (``SGLANG_USE_CPU_ENGINE=1``, the
pure-torch stand-in for its CPU ops on ``PYTHONPATH``, torch stand-ins for the Triton
kernels of its Qwen2-MoE, the AMX attention classes)
is set here and only in the server's environment; see CONTRIBUTING.md for the
same recipe by hand.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[3]
#: Folder holding the ``sgl_kernel`` stand-in package (never installed, never on the test path).
STUB_PATH = HERE / "sgl_kernel_stub"
#: Folder holding a test-only policy plugin (a dist-info with a ``moe_spec.policies`` entry point).
POLICY_PLUGIN_PATH = HERE / "policy_plugin"

SERVER_ENV = {
    "SGLANG_USE_CPU_ENGINE": "1",  # --device cpu alone does not select SGLang's CPU engine
    "TORCHDYNAMO_DISABLE": "1",  # skip torch.compile of the draft's top-k (30 s per server)
    "OMP_NUM_THREADS": "1",  # tiny matmuls; several servers share two cores
    "TOKENIZERS_PARALLELISM": "false",
    # The test-only SGLang plugin's torch stand-ins for Triton kernels (policy_plugin/).
    "SGLANG_PLUGINS": "moe_spec,live_test_cpu",
}
CPU_ARGS = [
    "--device", "cpu", "--host", "127.0.0.1",
    # Without AMX kernels SGLang would switch to torch_native, which has no EAGLE draft backend.
    # --mem-fraction-static 0.5: SGLang refuses to start when free memory drops by more than
    # the fraction while it loads, which other servers starting at once can cause; the KV
    # cache stays small anyway (--max-total-tokens).
    "--prefill-attention-backend", "intel_amx", "--decode-attention-backend", "intel_amx",
    "--disable-cuda-graph", "--mem-fraction-static", "0.5", "--max-total-tokens", "4096",
    "--skip-server-warmup", "--log-level", "info",
    # idle schedulers block on their sockets instead of spinning: a dozen test servers share
    # two cores with the tests (without it each idle server keeps a core busy)
    "--sleep-on-idle",
]  # fmt: skip
TREE_ARGS = [
    "--speculative-num-steps", "2", "--speculative-eagle-topk", "2",
    "--speculative-num-draft-tokens", "4",
]  # fmt: skip


class ServerStartError(RuntimeError):
    """A server exited or did not become ready; the message carries its log tail."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerSpec:
    """One server configuration: ``moe-spec serve`` arguments and SGLang's.

    ``serve_args`` None launches ``python -m sglang.launch_server`` directly (the
    non-speculative reference, which ``moe-spec serve`` refuses by design).
    """

    name: str
    model: Path
    sglang_args: list[str]
    serve_args: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)

    def argv(self, port: int) -> list[str]:
        server = ["--model-path", str(self.model), *CPU_ARGS, "--port", str(port)]
        server += self.sglang_args
        if self.serve_args is None:
            return [sys.executable, "-m", "sglang.launch_server", *server]
        return [sys.executable, "-m", "moe_spec.cli", "serve", *self.serve_args, "--", *server]


def server_environ(extra: dict[str, str]) -> dict[str, str]:
    """The test process's environment minus the plugin's, plus the CPU recipe and ``extra``."""
    base = {
        k: v for k, v in os.environ.items() if not k.startswith(("MOE_SPEC_", "SGLANG_PLUGINS"))
    }
    path = [str(STUB_PATH), str(POLICY_PLUGIN_PATH), str(ROOT), base.get("PYTHONPATH", "")]
    return {**base, **SERVER_ENV, "PYTHONPATH": os.pathsep.join(p for p in path if p), **extra}


class LiveServer:
    """A running server: its process group, its port, its log file."""

    #: Relaunches on a fresh port when the chosen one was taken while the server started.
    PORT_RETRIES = 2

    def __init__(self, spec: ServerSpec, log_dir: Path) -> None:
        self.spec = spec
        self.log_path = log_dir / f"{spec.name}.log"
        # SGLang names its IPC sockets with tempfile and leaves them when it is killed: they
        # go beside the logs, not into a /tmp that other jobs share
        self.tmp_dir = log_dir.parent / "tmp"
        self.tmp_dir.mkdir(exist_ok=True)
        self.ready_after_s: float | None = None
        self.port_clashes = 0
        self.launch()

    def launch(self) -> None:
        """Start the server on a port free now (SGLang binds it only after loading)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.started = time.monotonic()
        self.log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.spec.argv(self.port),
                cwd=ROOT,
                env={**server_environ(self.spec.env), "TMPDIR": str(self.tmp_dir)},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: one killpg stops every rank
            )

    def lost_its_port(self) -> bool:
        """Whether this launch exited because another process bound one of its ports meanwhile.

        ``free_port`` can only pick a port that is free when asked; under load a server
        takes minutes to bind it, and the other servers' internal sockets may take it first.
        The same holds for the rendezvous port SGLang picks itself (``nccl_port``, bound by
        the scheduler's TCPStore later). Only this launch's part of the log is read.
        """
        since_launch = self.log_path.read_bytes()[self.log_offset :].decode(errors="replace")
        http_port_taken = f"('127.0.0.1', {self.port}): address already in use" in since_launch
        return http_port_taken or "EADDRINUSE" in since_launch

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` log lines (SGLang's one-line dump of every argument left out)."""
        kept = [line[:400] for line in self.log().splitlines() if "server_args=" not in line]
        return "\n".join(kept[-lines:])

    def failure(self, what: str) -> ServerStartError:
        return ServerStartError(
            f"SGLang server {self.spec.name!r} {what}\n"
            f"command: {' '.join(self.spec.argv(self.port))}\n"
            f"--- last lines of {self.log_path} ---\n{self.log_tail()}"
        )

    def wait_ready(self, timeout_s: float) -> None:
        """Poll ``/health`` until it answers 200; raise :class:`ServerStartError` otherwise."""
        if self.ready_after_s is not None:
            return
        while time.monotonic() < self.started + timeout_s:  # a relaunch restarts the clock
            code = self.proc.poll()
            if code is not None and self.lost_its_port() and self.port_clashes < self.PORT_RETRIES:
                self.port_clashes += 1
                stop_all([self])  # its scheduler processes may outlive the HTTP server
                self.launch()
                continue
            if code is not None:
                raise self.failure(f"exited with code {code} before it was ready")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as response:
                    if response.status == 200:
                        self.ready_after_s = time.monotonic() - self.started
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(1.0)
        raise self.failure(f"was not ready after {timeout_s:.0f} s")

    def wait_exit(self, timeout_s: float) -> int:
        """The exit code of a server expected to stop by itself (a refused start)."""
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise self.failure(f"still running after {timeout_s:.0f} s") from None

    def stop(self) -> None:
        stop_all([self])

    # HTTP -----------------------------------------------------------------------------------
    def post(self, path: str, payload: dict, timeout_s: float = 300.0) -> dict:
        data = json.dumps(payload).encode()
        request = urllib.request.Request(
            self.url + path, data, {"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                return json.loads(response.read())
        except (urllib.error.URLError, OSError) as exc:
            if self.proc.poll() is not None:
                raise self.failure(f"died during POST {path} ({exc})") from None
            raise

    def get_text(self, path: str) -> str:
        with urllib.request.urlopen(self.url + path, timeout=60) as response:
            return response.read().decode()

    def generate(self, text: str, max_new_tokens: int = 12) -> dict:
        """Greedy ``/generate``, ignoring EOS so every request runs its full length."""
        params = {"max_new_tokens": max_new_tokens, "temperature": 0.0, "ignore_eos": True}
        return self.post("/generate", {"text": text, "sampling_params": params})


def stop_all(servers) -> None:
    """SIGTERM every server's process group at once; SIGKILL what is left after 20 s."""
    servers = list(servers)
    for sig, grace_s in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
        for server in servers:
            signal_group(server.proc.pid, sig)
        deadline = time.monotonic() + grace_s
        for server in servers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        servers = [s for s in servers if group_alive(s.proc.pid)]
        if not servers:
            return


def signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
