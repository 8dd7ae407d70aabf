"""The shared loop: it stops on request with a checkpoint, resumes, logs progress without a
terminal, and guards run folders; optimizer states keep their types."""

import dataclasses
import logging
import threading

import jax
import jax.numpy as jnp
import optax
import pytest

from diffcomm.config import FitConfig
from diffcomm.errors import ConfigError
from diffcomm.training import (
    Interrupted,
    Progress,
    claim_run_folder,
    clear_stop,
    load_checkpoint,
    request_stop,
    run_steps,
    save_checkpoint,
    strongly_typed,
)


def count(state):
    return state + 1, {"value": f"{state + 1}"}


def test_stop_after_checkpoints_then_raises():
    saved = []
    with pytest.raises(Interrupted) as stop:
        run_steps(count, 0, start=0, steps=10, save=lambda i, s: saved.append((i, s)), stop_after=4,
                  progress=Progress("count", 10, enabled=False))
    assert stop.value.step == 4 and saved[-1] == (4, 4)


def test_a_stop_is_honoured_once():
    request_stop()
    with pytest.raises(Interrupted):
        run_steps(count, 0, start=0, steps=10, save=lambda i, s: None, progress=Progress("c", 10, enabled=False))
    final, steps = run_steps(count, 0, start=0, steps=10, save=lambda i, s: None, progress=Progress("c", 10, enabled=False))
    assert (final, steps) == (10, 10)  # a later loop (the next fit in a notebook) runs


def test_a_checkpoint_whose_two_files_disagree_is_refused(tmp_path):
    path = tmp_path / "checkpoint"
    save_checkpoint(path, jnp.ones(3), dict(step=5))
    tree, meta = load_checkpoint(path, jnp.zeros(3))
    assert meta["step"] == 5 and float(tree.sum()) == 3.0
    save_checkpoint(path, jnp.ones(3), dict(step=6))
    (path.with_suffix(".json")).write_text('{"step": 5}')  # as if killed between the two writes
    with pytest.raises(ConfigError, match="is incomplete \\(state of step 6, record of step 5\\)"):
        load_checkpoint(path, jnp.zeros(3))


def test_a_stop_requested_from_another_thread_is_honoured():
    saved = []

    def slow(state):
        if state == 3:
            threading.Thread(target=request_stop).start()
            threading.Event().wait(0.1)
        return count(state)

    try:
        with pytest.raises(Interrupted) as stop:
            run_steps(slow, 0, start=0, steps=100, save=lambda i, s: saved.append(i), progress=Progress("c", 100, enabled=False))
    finally:
        clear_stop()
    assert 4 <= stop.value.step < 100 and saved[-1] == stop.value.step


def test_ctrl_c_inside_a_step_keeps_the_last_whole_state():
    saved = []

    def interrupted(state):
        if state == 5:
            raise KeyboardInterrupt
        return count(state)

    with pytest.raises(Interrupted) as stop:
        run_steps(interrupted, 0, start=0, steps=10, save=lambda i, s: saved.append((i, s)),
                  progress=Progress("c", 10, enabled=False))
    assert stop.value.step == 5 and saved[-1] == (5, 5)


def test_progress_without_a_terminal_logs_each_tenth(caplog, capsys):
    caplog.set_level(logging.INFO, logger="diffcomm")
    final, steps = run_steps(count, 0, start=0, steps=100, save=lambda i, s: None, progress=Progress("phase one", 100))
    assert final == 100 and steps == 100
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "phase one: started (100 steps at most)"
    assert sum("phase one: " in line and "/100 steps" in line for line in lines) == 10
    assert "\r" not in capsys.readouterr().err  # no redraws in a log


def test_a_run_folder_takes_one_configuration(tmp_path):
    claim_run_folder(tmp_path, FitConfig(), ignore=("stop_after",))
    claim_run_folder(tmp_path, dataclasses.replace(FitConfig(), stop_after=5), ignore=("stop_after",))  # a steering key
    claim_run_folder(tmp_path, FitConfig(restarts=3), ignore=("stop_after",))  # nothing left to resume: taken over
    (tmp_path / "checkpoint.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"holds a checkpoint of a different configuration .*\(checkpoint.json\)"):
        claim_run_folder(tmp_path, FitConfig(restarts=2), ignore=("stop_after",))
    (tmp_path / "checkpoint.json").unlink()
    (tmp_path / "summary.json").write_text("{}")
    with pytest.raises(ConfigError, match="holds the results of a different configuration"):
        claim_run_folder(tmp_path, FitConfig(restarts=2), ignore=("stop_after",))


def test_a_run_folder_takes_one_set_of_inputs(tmp_path):
    """A policy run resumed on a calibration that has changed since would mix two models."""
    calibration = tmp_path / "fitted.eqx"
    calibration.write_bytes(b"one")
    folder = tmp_path / "run"
    claim_run_folder(folder, FitConfig(), inputs=(calibration,))
    claim_run_folder(folder, FitConfig(), inputs=(calibration,))  # the same: resumes
    (folder / "checkpoint.json").write_text("{}")
    calibration.write_bytes(b"two")
    with pytest.raises(ConfigError, match="different configuration or other inputs"):
        claim_run_folder(folder, FitConfig(), inputs=(calibration,))


def test_weak_types_are_made_strong():
    state = jax.vmap(optax.lbfgs().init)({"x": jnp.ones((1, 3))})
    assert any(jax.typeof(leaf).weak_type for leaf in jax.tree_util.tree_leaves(state))
    assert not any(jax.typeof(leaf).weak_type for leaf in jax.tree_util.tree_leaves(strongly_typed(state)))
