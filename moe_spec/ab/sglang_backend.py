"""The ``sglang`` backend: running SGLang servers (each launched with ``moe-spec serve``).

For every run it POSTs to the native ``/generate`` endpoint, which (unlike the
OpenAI routes) returns ``output_ids`` and ``meta_info`` with ``completion_tokens``
and, when the server runs speculative decoding, ``spec_verify_ct`` (verify
forwards of the request; SGLang's own ``spec_accept_length`` is
``completion_tokens / spec_verify_ct``). Time is measured end to end by the
client. With ``return_logprob`` the server's ``output_token_logprobs``
(``[logprob, token_id, text]`` per token) give the log-probability of the text
*as served* (a budgeted server scores with its budgeted verify). Distinct-expert
counts are not reported by SGLang, so those columns stay empty.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

from moe_spec.ab.configs import RunConfig
from moe_spec.ab.records import RunRecord


class ServerError(ValueError):
    """A server is unreachable, answers badly, or does not run speculative decoding."""


def http_json(url: str, payload: dict | None, timeout: float) -> dict:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:200]
        raise ServerError(f"{url}: HTTP {exc.code} {exc.reason}: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ServerError(f"{url}: server unreachable ({reason})") from None
    try:
        obj = json.loads(body)
    except json.JSONDecodeError:
        raise ServerError(f"{url}: the answer is not JSON: {body[:100]!r}") from None
    if not isinstance(obj, dict):
        raise ServerError(f"{url}: expected a JSON object, got {type(obj).__name__}")
    return obj


class SglangBackend:
    name = "sglang"

    def __init__(self, servers: dict[str, str], timeout: float = 600.0) -> None:
        """``servers``: configuration label -> base URL (``http://host:port``)."""
        self.servers = {label: url.rstrip("/") for label, url in servers.items()}
        self.timeout = timeout
        self.infos: dict[str, dict] = {}  # label -> the server's /server_info (after check)

    def model_info(self) -> dict:
        return {}

    def check(self, configs: list[RunConfig]) -> None:
        """Every configuration has a reachable server; speculative ones run speculation."""
        for c in configs:
            if c.repair:
                raise ServerError(f"{c.label}: repair runs only on the engine backend")
            if c.label not in self.servers:
                raise ServerError(f"configuration {c.label!r} has no server (--server or server=)")
            info = self.infos[c.label] = self.server_info(self.servers[c.label])
            algorithm = info.get("speculative_algorithm")
            if c.kind != "autoregressive" and not algorithm:
                raise ServerError(
                    f"{self.servers[c.label]} (for {c.label!r}) is not running speculative "
                    "decoding (speculative_algorithm is not set); launch it with moe-spec serve"
                )
            if c.kind == "depth-width":
                raise ServerError("the depth-width baseline runs only on the engine backend")

    def provenance(self) -> tuple[str, str]:
        """``(model, code)`` as the servers report them: model paths and SGLang versions."""

        def reported(key: str) -> str:
            return ", ".join(sorted({str(i.get(key, "?")) for i in self.infos.values()}))

        return reported("model_path"), f"sglang {reported('version')}"

    def server_info(self, url: str) -> dict:
        try:
            return http_json(url + "/server_info", None, min(self.timeout, 30))
        except ServerError as exc:
            if "HTTP 404" not in str(exc):
                raise
            return http_json(url + "/get_server_info", None, min(self.timeout, 30))

    def run(self, config: RunConfig, index: int, prompt: str, seed: int, max_new: int):
        url = self.servers[config.label] + "/generate"
        payload = {
            "text": prompt,
            "sampling_params": {
                "max_new_tokens": max_new,
                "temperature": config.temperature,
                "sampling_seed": seed,
            },
            "return_logprob": True,
        }
        start = time.perf_counter()
        answer = http_json(url, payload, self.timeout)
        seconds = time.perf_counter() - start
        return parse_generate(answer, config, index, seed, seconds, url)


def parse_generate(answer: dict, config: RunConfig, index: int, seed: int, seconds, url: str):
    meta = answer.get("meta_info")
    tokens = answer.get("output_ids")
    if not isinstance(meta, dict) or not isinstance(tokens, list):
        raise ServerError(f"{url}: the answer lacks meta_info or output_ids (not SGLang?)")
    completion = meta.get("completion_tokens", len(tokens))
    verify_ct = meta.get("spec_verify_ct")
    if config.kind != "autoregressive" and completion and not verify_ct:
        raise ServerError(
            f"{url}: meta_info has no spec_verify_ct: the server is not running speculative "
            f"decoding, but {config.label!r} expects it"
        )
    logprobs = meta.get("output_token_logprobs")
    total = None
    if isinstance(logprobs, list) and logprobs and all(lp and lp[0] is not None for lp in logprobs):
        total = float(sum(lp[0] for lp in logprobs))
    return RunRecord(config.label, index, seed, list(tokens), seconds, [], verify_ct, total)
