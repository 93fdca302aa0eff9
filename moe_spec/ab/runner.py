"""The interleaved runner: every configuration on every prompt, round-robin, resumable.

Prompt ``i`` runs every configuration with seed ``seed + i`` before prompt
``i + 1`` starts, and the configuration order rotates by one per prompt, so
slow drift of the machine (heat, other load) falls on all configurations alike
and no configuration always runs first. Finished runs go to the store at once.
"""

from __future__ import annotations

from typing import TypeVar

from moe_spec.ab.configs import RunConfig
from moe_spec.ab.records import RunRecord, Store

C = TypeVar("C")


class RunInterruptedError(ValueError):
    """A run failed; the finished ones are kept in the output folder."""


def schedule(configs: list[C], n_prompts: int) -> list[tuple[int, C]]:
    """``(prompt index, config)`` in run order: prompt by prompt, rotating the configs
    (any items: ``moe-spec demo`` schedules its ``(label, spec)`` pairs the same way)."""
    order = []
    for i in range(n_prompts):
        shift = i % len(configs)
        order += [(i, c) for c in configs[shift:] + configs[:shift]]
    return order


def run_name(i: int, seeds: int = 1) -> str:
    """Run ``i`` as a user counts it: ``prompt 3``, or ``prompt 3, seed 2`` with seeds."""
    return f"prompt {i // seeds + 1}" + (f", seed {i % seeds + 1}" if seeds > 1 else "")


def run_all(
    backend,
    configs: list[RunConfig],
    prompts: list[str],
    store: Store,
    seed: int,
    max_new_tokens: int,
    show_progress: bool = True,
    seeds: int = 1,
) -> dict[tuple[str, int], RunRecord]:
    """Run what the store does not hold yet; return every record keyed ``(label, run index)``
    (run ``i`` is prompt ``i // seeds``; progress and errors number prompts from 1)."""
    from tqdm import tqdm

    todo = [(i, c) for i, c in schedule(configs, len(prompts)) if (c.label, i) not in store.done]
    total = len(configs) * len(prompts)
    with tqdm(total=total, initial=total - len(todo), disable=not show_progress, unit="run") as bar:
        for i, config in todo:
            bar.set_description(f"{config.label} / {run_name(i, seeds)}")
            try:
                record = backend.run(config, i, prompts[i], seed + i, max_new_tokens)
            except ValueError as exc:
                raise RunInterruptedError(
                    f"{config.label} on {run_name(i, seeds)}: {exc}\n{len(store.done)} "
                    f"finished runs are kept in {store.folder}; fix the cause and rerun with "
                    "--resume"
                ) from exc
            store.add(record)
            bar.update()
    return dict(store.done)
