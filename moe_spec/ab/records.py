"""One finished (configuration, prompt) run and the store that keeps them for resuming.

The output folder holds ``run.json`` (what the run is: prompts, configurations,
seed, tokens; a resumed run must match it) and ``runs.jsonl``, one record per
line, appended as each run finishes, so an interrupted run loses at most the
run in progress.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

RUN_SCHEMA = "moe-spec-ab-run/1"


@dataclass
class Step:
    """A verify step: committed tokens, the tree, distinct experts per layer."""

    committed: int
    num_tokens: int
    width: int
    depth: int
    before_L: list[int]
    after_L: list[int]
    path_L: list[int]
    repair_tokens: int = 0  # tokens re-run unbudgeted after the verify (repair=true)
    repair_L: list[int] = field(default_factory=list)  # that forward's distinct experts


@dataclass
class RunRecord:
    label: str
    prompt: int  # index into the prompts
    seed: int
    tokens: list[int]
    seconds: float
    steps: list[Step] = field(default_factory=list)  # engine backend only
    verify_ct: int | None = None  # verify forwards (sglang reports it; engine: len(steps))
    logprobs_sum: float | None = None  # target log-probability of the tokens, summed
    error: str | None = None

    @classmethod
    def from_dict(cls, data: dict) -> RunRecord:
        steps = [Step(**s) for s in data.pop("steps", [])]
        return cls(**data, steps=steps)


def fingerprint(prompts: list[str]) -> str:
    return hashlib.sha256(json.dumps(prompts).encode()).hexdigest()[:16]


class ResumeError(ValueError):
    """The output folder holds a different run, or results without ``--resume``."""


class Store:
    """``run.json`` + ``runs.jsonl`` in ``folder``."""

    def __init__(self, folder: Path, header: dict, resume: bool) -> None:
        self.folder, self.header = Path(folder), header
        self.folder.mkdir(parents=True, exist_ok=True)
        self.runs_path, self.header_path = self.folder / "runs.jsonl", self.folder / "run.json"
        self.done: dict[tuple[str, int], RunRecord] = {}
        if self.runs_path.exists() and self.runs_path.stat().st_size:
            if not resume:
                raise ResumeError(
                    f"{self.folder} already holds results; pass --resume to continue that run "
                    "or choose another --out"
                )
            self.check_header()
            self.load()
        self.header_path.write_text(json.dumps({"schema": RUN_SCHEMA, **header}, indent=2))

    def check_header(self) -> None:
        old = json.loads(self.header_path.read_text()) if self.header_path.exists() else {}
        for key in ("prompts_sha", "max_new_tokens", "seed", "backend", "controller"):
            if key == "controller" and old.get(key) is None:
                continue  # a depth-width arm added on resume brings its controller
            if old.get(key) != self.header.get(key):
                raise ResumeError(
                    f"{self.folder} holds a run with {key}={old.get(key)!r}, this one has "
                    f"{self.header.get(key)!r}; resume with the same options or use another --out"
                )

    def load(self) -> None:
        for _n, line in enumerate(self.runs_path.read_text().splitlines(), 1):
            try:
                record = RunRecord.from_dict(json.loads(line))
            except (json.JSONDecodeError, TypeError):
                continue  # a line cut short by an interruption: that run reruns
            if record.error is None:
                self.done[(record.label, record.prompt)] = record

    def add(self, record: RunRecord) -> None:
        with self.runs_path.open("a") as f:
            f.write(json.dumps(asdict(record)) + "\n")
        if record.error is None:
            self.done[(record.label, record.prompt)] = record
