"""The sglang backend against a local HTTP server that speaks SGLang's native API."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from moe_spec.ab.configs import RunConfig
from moe_spec.ab.sglang_backend import ServerError, SglangBackend
from moe_spec.cli import main


def fake_sglang(speculative: bool, fail_after: int | None = None):
    """A server with /server_info and /generate; ``fail_after`` requests, /generate answers 500."""
    state = {"requests": []}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def reply(self, code: int, obj) -> None:
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/server_info":
                algo = "EAGLE3" if speculative else None
                self.reply(200, {"speculative_algorithm": algo, "version": "0.5.23"})
            else:
                self.reply(404, {"detail": "Not Found"})

        def do_POST(self):
            req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state["requests"].append(req)
            if self.path != "/generate":
                return self.reply(404, {"detail": "Not Found"})
            if fail_after is not None and len(state["requests"]) > fail_after:
                return self.reply(500, {"error": "out of memory"})
            n = req["sampling_params"]["max_new_tokens"]
            ids = [(len(req["text"]) + i) % 50 for i in range(n)]
            meta = {
                "id": "r",
                "finish_reason": {"type": "length"},
                "prompt_tokens": 3,
                "completion_tokens": n,
                "cached_tokens": 0,
                "e2e_latency": 0.01,
                "output_token_logprobs": [[-0.5, t, None] for t in ids],
            }
            if speculative:
                meta.update(spec_verify_ct=max(n // 3, 1), spec_accept_length=n / max(n // 3, 1))
            self.reply(200, {"text": "x" * n, "output_ids": ids, "meta_info": meta})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}", state


@pytest.fixture
def spec_server():
    server, url, state = fake_sglang(True)
    yield url, state
    server.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_generate_request_and_parsed_answer(spec_server):
    url, state = spec_server
    config = RunConfig("token-priority", 16, temperature=0.5)
    backend = SglangBackend({config.label: url + "/"})
    backend.check([config])
    record = backend.run(config, 3, "abcd", 11, 9)
    sent = state["requests"][-1]
    assert sent["text"] == "abcd" and sent["return_logprob"] is True
    assert sent["sampling_params"] == {"max_new_tokens": 9, "temperature": 0.5, "sampling_seed": 11}
    assert record.tokens == [(4 + i) % 50 for i in range(9)]
    assert record.verify_ct == 3 and record.logprobs_sum == pytest.approx(-4.5)
    assert (record.label, record.prompt, record.seed) == (config.label, 3, 11)
    assert record.seconds > 0 and record.steps == []


def test_unreachable_and_non_speculative_servers_are_clear_errors():
    config = RunConfig("none")
    with pytest.raises(ServerError, match="unreachable"):
        SglangBackend({"none": f"http://127.0.0.1:{free_port()}"}, timeout=5).check([config])
    server, url, _ = fake_sglang(False)
    try:
        with pytest.raises(ServerError, match="not running speculative decoding"):
            SglangBackend({"none": url}).check([config])
        SglangBackend({"autoregressive": url}).check([RunConfig("autoregressive")])
        with pytest.raises(ServerError, match="no spec_verify_ct"):
            SglangBackend({"none": url}).run(config, 0, "p", 0, 4)
    finally:
        server.shutdown()
    with pytest.raises(ServerError, match="has no server"):
        SglangBackend({}).check([config])
    with pytest.raises(ServerError, match="repair runs only on the engine backend"):
        SglangBackend({}).check([RunConfig("token-priority", 8, repair=True)])


def test_cli_over_two_servers_keeps_finished_results_when_one_fails(tmp_path, capsys):
    good, good_url, _ = fake_sglang(True)
    flaky, flaky_url, _ = fake_sglang(True, fail_after=2)
    prompts = tmp_path / "p.txt"
    prompts.write_text("one\ntwo\nthree\n")
    args = [
        "ab",
        "--backend",
        "sglang",
        "--prompts",
        str(prompts),
        "--config",
        "none",
        "--config",
        "token-priority:B=16",
        "--server",
        good_url,
        "--server",
        flaky_url,
        "--max-new-tokens",
        "6",
        "--out",
        str(tmp_path / "out"),
        "--no-progress",
    ]
    try:
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "HTTP 500" in err and "finished runs are kept" in err
        assert (
            len((tmp_path / "out" / "runs.jsonl").read_text().splitlines()) == 5
        )  # the 3rd flaky one failed
        flaky.shutdown()
        flaky, flaky_url, _ = fake_sglang(True)
        args[args.index("--server") + 3] = flaky_url
        assert main([*args, "--resume"]) == 0
    finally:
        good.shutdown()
        flaky.shutdown()
    out = capsys.readouterr().out
    assert "token-priority B=16" in out and "3.00" in out  # 6 tokens / 2 verify steps
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["schema"] == "moe-spec-ab/1" and results["backend"] == "sglang"
    row = next(c for c in results["configs"] if c["label"] == "token-priority B=16")
    assert row["metrics"]["acceptance_length"] == pytest.approx(3.0)
    assert row["metrics"]["mean_logprob"] == pytest.approx(-0.5)
    assert row["distinct_after"] is None


@pytest.mark.parametrize(
    ("configs", "servers", "message"),
    [
        (
            ["token-priority:B=8"],
            2,
            "2 --server URLs for 1 configuration; allowed: one --server per --config, in order "
            "(--backend sglang adds no 'none' arm of its own: to compare with unbudgeted "
            "speculation, add --config none and its server)",
        ),
        (["none", "token-priority:B=8"], 1, "1 --server URL for 2 configurations; allowed"),
    ],
)
def test_a_server_count_that_does_not_match_the_arms_says_why(tmp_path, capsys, configs,
                                                              servers, message):  # fmt: skip
    """The docs say `none` is always added: on the engine backend. With SGLang every arm
    needs a server, so the harness adds no `none` arm, and the count said "2 --server URLs
    for 1 configurations" without saying so."""
    args = ["ab", "--backend", "sglang", "--out", str(tmp_path / "out")]
    args += [a for c in configs for a in ("--config", c)]
    args += [a for i in range(servers) for a in ("--server", f"http://127.0.0.1:{i + 1}")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and ("add --config none" in err) == ("none" not in configs)
