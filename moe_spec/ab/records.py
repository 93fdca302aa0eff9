"""One finished (configuration, prompt) run and the store that keeps them for resuming.

The output folder holds ``run.json`` (what the run is: prompts, seed, tokens,
the model and code fingerprints, each arm's configuration hash; a resumed run
must match it, see ``moe_spec.ab.provenance``) and ``runs.jsonl``, one record per
line, appended as each run finishes, so an interrupted run loses at most the
run in progress. Each record carries its arm's configuration hash: on resume,
records of an arm whose configuration changed are not reused (that arm reruns).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
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
    guard: str = ""  # a planning policy's step kind (auto: "tree" / "autoregressive")
    reason: str = ""  # why it planned this step
    ranked: bool = True  # the policy ran in the verify (False: priced without the selection)
    ranked_after: bool = False  # it ranked the verify's routing after the forward instead


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
    config_sha: str | None = None  # the arm's configuration hash (set by the store)

    @classmethod
    def from_dict(cls, data: dict) -> RunRecord:
        """A record from its JSON; ``TypeError`` naming a field of the wrong type."""
        steps = data.pop("steps", [])
        if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
            raise TypeError(f"steps is {steps!r}; allowed: a list of objects")
        return checked(cls(**data, steps=[checked(Step(**s)) for s in steps]))


def _is(value, annotation: str) -> bool:
    """Whether a JSON value fits a field annotation (``int``, ``list[int]``, ``str | None``...)."""
    if annotation.endswith(" | None"):
        return value is None or _is(value, annotation[: -len(" | None")])
    if annotation.startswith("list["):
        inner = annotation[5:-1]
        return isinstance(value, list) and (inner == "Step" or all(_is(v, inner) for v in value))
    if annotation == "bool":
        return isinstance(value, bool)
    kinds = {"int": int, "float": int | float, "str": str}
    return isinstance(value, kinds.get(annotation, object)) and not isinstance(value, bool)


def checked(obj):
    """``obj`` (a :class:`Step` or :class:`RunRecord` read back) if each field has its type."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        if not _is(value, str(f.type)):
            raise TypeError(f"{f.name} is {value!r}; allowed: {f.type}")
    return obj


def fingerprint(prompts: list[str]) -> str:
    return hashlib.sha256(json.dumps(prompts).encode()).hexdigest()[:16]


class ResumeError(ValueError):
    """The output folder holds a different run, or results without ``--resume``."""


class Store:
    """``run.json`` + ``runs.jsonl`` in ``folder``.

    ``header["arms"]`` maps each label to its configuration hash; records of a
    label whose hash changed are left out of :attr:`done` and counted in
    :attr:`stale` (label -> runs that will run again); records of a label the header does not
    name are left out too, their labels in :attr:`unnamed`.
    """

    #: header keys a resumed run must match, with what each one means
    MATCHED = {
        "prompts_sha": "prompts",
        "max_new_tokens": "--max-new-tokens",
        "seed": "seed",
        "backend": "backend",
        "controller": "depth-width controller",
        "model": "model",
        "code": "moe-spec code",
    }

    def __init__(self, folder: Path, header: dict, resume: bool) -> None:
        self.folder, self.header = Path(folder), header
        self.arms: dict[str, str] = dict(header.get("arms", {}))
        self.folder.mkdir(parents=True, exist_ok=True)
        self.runs_path, self.header_path = self.folder / "runs.jsonl", self.folder / "run.json"
        self.done: dict[tuple[str, int], RunRecord] = {}
        self.stale: dict[str, int] = {}
        self.unnamed: set[str] = set()  # stored arms this run does not name
        self.cut_line = False
        if self.runs_path.exists() and self.runs_path.stat().st_size:
            if not resume:
                raise ResumeError(
                    f"{self.folder} already holds results; pass --resume to continue that run "
                    "or choose another --out"
                )
            self.check_header()
            self.drop_cut_line()
            self.load()
        self.header_path.write_text(json.dumps({"schema": RUN_SCHEMA, **header}, indent=2))

    def check_header(self) -> None:
        old = self.read_header()
        for key, what in self.MATCHED.items():
            if key not in self.header or old.get(key) == self.header[key]:
                continue
            if key == "controller" and old.get(key) is None:
                continue  # a depth-width arm added on resume brings its controller
            if key not in old:
                raise ResumeError(
                    f"{self.header_path} does not record the {what} (written by an older "
                    "moe-spec), so its results cannot be checked; write to another --out"
                )
            advice = "resume with the same options"
            if key == "prompts_sha":
                advice = "resume with the prompts it was started with" + (
                    f" ({old['prompts']} runs: the same --prompts, --num-prompts and --seeds)"
                    if "prompts" in old
                    else ""
                )
            elif key == "model" and old.get("model_name"):
                advice = f"resume with the model it ran ({old['model_name']})"
            elif key == "code":  # no option brings the old code back
                advice = f"resume with the moe-spec that wrote it ({old[key]})"
            raise ResumeError(
                f"{self.folder} holds results for {'other' if what == 'prompts' else 'another'} "
                f"{what} ({key}: stored "
                f"{old[key]!r}, now {self.header[key]!r}); reusing them would mix the two. To "
                f"continue the stored run, {advice}; to start over, choose another --out or "
                f"delete {self.runs_path}"
            )

    def read_header(self) -> dict:
        if not self.header_path.exists():
            raise ResumeError(
                f"{self.runs_path} has no {self.header_path.name} beside it, so its results "
                "cannot be checked; write to another --out"
            )
        try:
            old = json.loads(self.header_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ResumeError(f"{self.header_path} is not valid JSON ({exc})") from None
        if not isinstance(old, dict):
            raise ResumeError(f"{self.header_path} must hold a JSON object")
        return old

    def drop_cut_line(self) -> None:
        """Cut off a last line that an interruption left without its newline."""
        data = self.runs_path.read_bytes()
        if data.endswith(b"\n"):
            return
        self.runs_path.write_bytes(data[: data.rfind(b"\n") + 1])
        self.cut_line = True

    def load(self) -> None:
        for n, raw in enumerate(self.runs_path.read_bytes().splitlines(), 1):
            if not raw.strip():
                continue
            try:
                data = json.loads(raw.decode("utf-8"))
                if not isinstance(data, dict):
                    raise TypeError(f"a {type(data).__name__}, not an object")
                record = RunRecord.from_dict(data)
            except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as exc:
                raise ResumeError(
                    f"{self.runs_path}:{n} is not a run record ({exc}); fix or delete that "
                    "line to resume"
                ) from None
            if record.error is not None:
                continue
            if self.arms and record.config_sha != self.arms.get(record.label):
                if record.label in self.arms:
                    self.stale[record.label] = self.stale.get(record.label, 0) + 1
                else:
                    self.unnamed.add(record.label)
                continue
            self.done[(record.label, record.prompt)] = record

    def notices(self) -> list[str]:
        """What resuming changed: a cut line dropped, arms whose stored runs are stale."""
        out = []
        if self.cut_line:
            out.append(
                f"{self.runs_path}: the last line was cut short by an interruption; "
                "that run runs again"
            )
        for label, n in sorted(self.stale.items()):
            out.append(
                f"{label!r}: its configuration changed since {n} stored runs (a key of its "
                "own, or a default it takes from --mode, --num-tokens, --width, --depth or "
                "--temperature); they run again"
            )
        return out

    def reused(self, runs: int) -> str:
        """What a resume of ``runs`` runs an arm reuses, and the stored arms it leaves out."""
        held = sum((label, i) in self.done for label in self.arms for i in range(runs))
        text = f"resuming: {held} of {len(self.arms) * runs} runs are stored and reused"
        if self.unnamed:
            text += (
                f"; the stored arms {sorted(self.unnamed)} are not named, so the report leaves "
                "them out"
            )
        return text

    def add(self, record: RunRecord) -> None:
        record.config_sha = self.arms.get(record.label)
        with self.runs_path.open("a") as f:
            f.write(json.dumps(asdict(record)) + "\n")
        if record.error is None:
            self.done[(record.label, record.prompt)] = record
