"""One loop of optimizer steps for calibration and policy: progress, checkpoints, interruption.

`run_steps` calls a step function until a number of steps (or a stopping rule), shows progress
(a bar on a terminal, a log line every tenth of the way in a log), checkpoints every few steps,
and stops cleanly on Ctrl-C, on `request_stop()` (from another thread: the command line runs
the work in one) or after `stop_after` steps: it checkpoints and raises `Interrupted`, and the
same call with the same checkpoint path resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .errors import ConfigError
from .files import atomic_path, write_json

log = logging.getLogger("diffcomm")

_STOP = threading.Event()


def request_stop() -> None:
    """Ask every running loop to checkpoint and stop (what Ctrl-C does on the command line)."""
    _STOP.set()


def stop_requested() -> bool:
    return _STOP.is_set()


def clear_stop() -> None:
    _STOP.clear()


def check_stop() -> None:
    """Raise `Interrupted` (with no checkpoint) if a stop was requested: for work that is not a
    loop of steps, such as writing a large table, to call between its parts."""
    if stop_requested():
        clear_stop()
        raise Interrupted(0, None)


def warmup_cosine(peak: float, steps: int, *, warmup_fraction: float = 0.05, final_fraction: float = 0.04) -> optax.Schedule:
    """Learning rate: linear warm-up over a fraction of `steps`, then cosine decay to a fraction of `peak`."""
    warmup = max(1, int(warmup_fraction * steps))
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(warmup + 1, steps), peak * final_fraction)


@functools.lru_cache(maxsize=None)  # the same object for the same settings, so one compiled step serves all
def adam_with_warmup(steps: int, peak: float = 0.05) -> optax.GradientTransformation:
    """Adam with `warmup_cosine(peak, steps)`: the default optimizer of calibration.

    ```yaml
    transform: {_target_: diffcomm.training.adam_with_warmup, steps: ${fit.steps}}
    ```
    """
    return optax.adam(warmup_cosine(peak, steps))


@functools.lru_cache(maxsize=None)
def sgd_with_warmup(steps: int, peak: float) -> optax.GradientTransformation:
    """Plain steps scaled by `warmup_cosine(peak, steps)`: the policy's mirror ascent takes them on
    the logarithm of spending (`policy.optimize`)."""
    return optax.sgd(warmup_cosine(peak, steps))


def strongly_typed(tree):
    """`tree` with weakly typed arrays made strong. An optimizer's `init` can leave weak types
    (optax's line search does) that its `update` returns strong; the compiled step would then
    see new types on its second call and compile again."""
    return jax.tree_util.tree_map(
        lambda x: jax.lax.convert_element_type(x, jnp.result_type(x)) if isinstance(x, jax.Array) else x, tree)


class Interrupted(Exception):
    """Raised when a loop stops early by request; its checkpoint lets a later call resume."""

    def __init__(self, step: int, path: Path | None):
        super().__init__(f"stopped at step {step}" + (f"; checkpoint in {path}" if path else ""))
        self.step, self.path = step, path


class Progress:
    """Progress of one named phase. Its start and end (with key figures) always go to the log;
    with `enabled`, so does its progress: a tqdm bar when stderr is a terminal, otherwise a log
    line at every tenth of the way or every `LOG_EVERY` seconds, whichever comes first (no
    redraws in a log file)."""

    LOG_EVERY = 30.0

    def __init__(self, phase: str, total: int, *, enabled: bool = True, initial: int = 0, unit: str = "step"):
        self.phase, self.total, self.enabled, self.unit = phase, total, enabled, unit
        self.started = time.perf_counter()
        self.bar = None
        self.next_log, self.logged = initial + max(1, total // 10), self.started
        if enabled and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=phase, unit=unit, leave=False)
        resumed = f", resumed from the checkpoint at {initial}" if initial else ""
        log.info("%s: started (%d %ss at most%s)", phase, total, unit, resumed)

    def update(self, done: int, **figures) -> None:
        """`done` units of `total` are done; `figures` are shown beside the count."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            self.bar.set_postfix(**figures, refresh=False)
        elif done >= self.next_log or time.perf_counter() - self.logged >= self.LOG_EVERY:
            self.next_log, self.logged = done + max(1, self.total // 10), time.perf_counter()
            shown = " ".join(f"{k} {v}" for k, v in figures.items())
            log.info("%s: %d/%d %ss, %s, %.0f s", self.phase, done, self.total, self.unit, shown, self.seconds)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def close(self, outcome: str = "") -> None:
        if self.bar is not None:
            self.bar.close()
        log.info("%s: done in %.1f s%s", self.phase, self.seconds, f"; {outcome}" if outcome else "")


def run_steps(
    step: Callable[[Any], tuple[Any, dict]],
    state: Any,
    *,
    start: int,
    steps: int,
    save: Callable[[int, Any], None],
    progress: Progress,
    done: Callable[[Any], bool] = lambda state: False,
    checkpoint_every: int = 0,
    stop_after: int | None = None,
    checkpoint_path: Path | None = None,
) -> tuple[Any, int]:
    """Apply `step` to `state` from step `start` until `steps` (or until `done(state)`).

    `step(state)` does one iteration and returns the new state and the figures to show.
    `save(i, state)` checkpoints after step i: every `checkpoint_every` steps and at the end.
    After `stop_after` steps in this call, on Ctrl-C or on `request_stop()`, it checkpoints and
    raises `Interrupted`.

    **Returns:** the final state and the number of steps done.
    """
    i = start
    try:
        while i < steps and not done(state):
            if (stop_after is not None and i - start >= stop_after) or stop_requested():
                save(i, state)
                clear_stop()  # the request is honoured: a later loop (a notebook's next fit) runs
                raise Interrupted(i, checkpoint_path)
            state, figures = step(state)
            i += 1
            progress.update(i, **figures)
            if checkpoint_every and i % checkpoint_every == 0:
                save(i, state)
    except KeyboardInterrupt:
        save(i, state)
        raise Interrupted(i, checkpoint_path) from None
    save(i, state)
    return state, i


def save_checkpoint(path: Path, tree, meta: dict) -> None:
    """Arrays with equinox serialisation (`.eqx`), the rest as JSON, each written atomically.

    Both files carry the step (`meta["step"]`), so that a pair from two different steps (the
    process killed between the two writes) is recognised and refused.
    """
    path = Path(path)
    with atomic_path(path.with_suffix(".eqx")) as tmp:
        eqx.tree_serialise_leaves(tmp, (tree, np.int64(meta["step"])))
    write_json(path.with_suffix(".json"), meta)


def load_checkpoint(path: Path | None, like):
    """`(tree, meta)` of the checkpoint at `path`, or None if there is none.

    Raises `ConfigError` if its two files are from different steps or cannot be read.
    """
    if path is None or not Path(path).with_suffix(".json").exists():
        return None
    path = Path(path)
    try:
        meta = json.loads(path.with_suffix(".json").read_text())
        tree, step = eqx.tree_deserialise_leaves(path.with_suffix(".eqx"), (like, np.int64(0)))
    except (OSError, ValueError, RuntimeError) as error:
        raise ConfigError(f"the checkpoint {path}.* cannot be read ({type(error).__name__}); delete it to start over") from None
    if int(step) != meta["step"]:
        raise ConfigError(f"the checkpoint {path}.* is incomplete (state of step {int(step)}, record of step "
                          f"{meta['step']}); delete it to start over")
    return tree, meta


def claim_run_folder(folder: Path, config, *, ignore: tuple[str, ...] = (), inputs: tuple[Path, ...] = ()) -> None:
    """Mark `folder` with the fingerprint of `config` (a dataclass) and of the contents of the
    files `inputs` (e.g. the calibration a policy starts from); refuse a folder marked by another
    configuration or other inputs that left a checkpoint (it would be resumed) or finished results
    there. A folder whose earlier run stopped before either (e.g. on a bad data file) is taken over.

    `ignore`: dotted keys that only steer one call (e.g. `fit.stop_after`, `fit.progress`).
    """
    plain = dataclasses.asdict(config)
    for key in ignore:
        *parents, last = key.split(".")
        node = plain
        for part in parents:
            node = node[part]
        node.pop(last, None)
    digest = hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode())
    for path in inputs:
        digest.update(Path(path).read_bytes())
    fingerprint = digest.hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    stamp = folder / "fingerprint.txt"
    if stamp.exists() and stamp.read_text().strip() != fingerprint:
        held = sorted(path.name for path in folder.iterdir() if path.name.startswith("checkpoint") or path.name == "summary.json")
        if held:
            kind = "a checkpoint" if held[0].startswith("checkpoint") else "the results"
            raise ConfigError(f"{folder} holds {kind} of a different configuration or other inputs ({held[0]}); "
                              "use a new run folder")
    stamp.write_text(fingerprint + "\n")
