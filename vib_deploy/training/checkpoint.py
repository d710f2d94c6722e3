"""Training checkpoints: what `train` writes at the end of every epoch and reads back to resume exactly.

A checkpoint holds the model, optimizer, scheduler, every RNG state (each rank's, gathered by rank 0 under
torchrun), epoch, best metric and history; it is written atomically and sha256-verified before it is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vib_deploy.errors import UserError, first_line
from vib_deploy.runs.directory import RunDir
from vib_deploy.runs.files import to_bytes
from vib_deploy.training import distributed


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def checkpoint_state(model, opt, sched, gen, epoch, best, best_state, history, key) -> dict[str, Any]:
    rng = rng_state()
    state = {
        "key": key,
        "epoch": epoch,
        "best": best,
        "history": history,
        "model": model.state_dict(),
        "best_model": best_state,
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "rng_torch": rng["torch"],
        "rng_shuffle": gen.get_state(),
        "rng_cuda": rng["cuda"],
    }
    if distributed.active():  # a collective: every rank calls this, rank 0 writes the result
        state["world_size"] = distributed.world_size()
        state["rng_ranks"] = distributed.all_gather(rng)
    return state


def restore_rng(ckpt: dict[str, Any], gen: torch.Generator, path: Path, epochs_left: int) -> None:
    """The shuffling generator and this rank's global RNG (gate noise) as they were at the checkpoint."""
    saved_world, world = ckpt.get("world_size", 1), distributed.world_size()
    if saved_world != world and epochs_left > 0:
        raise UserError(
            f"{path} was written by a {saved_world}-process run and has {epochs_left} epoch(s) left, but this "
            f"run has {world} process(es); resume with {saved_world} (each rank's gate-noise RNG is in it) "
            "or delete the checkpoint to start the stage over"
        )
    gen.set_state(ckpt["rng_shuffle"])
    own = (
        ckpt["rng_ranks"][distributed.rank()]
        if saved_world > 1
        else {"torch": ckpt["rng_torch"], "cuda": ckpt["rng_cuda"]}
    )
    torch.set_rng_state(own["torch"])
    if own["cuda"]:
        torch.cuda.set_rng_state_all(own["cuda"])


def save_checkpoint(run: RunDir, stage: str, name: str, state: dict[str, Any]) -> None:
    data = to_bytes(state)  # in memory first: a disk-full error can say how much was needed
    run.write_artifact(stage, name, lambda tmp: tmp.write_bytes(data), len(data))


def load_checkpoint(run: RunDir, name: str) -> dict[str, Any] | None:
    path = run.file(name)
    if not path.exists():
        return None
    run.verified(name)  # a truncated or altered checkpoint is an error, never a silent restart
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for garbage files
        raise UserError(f"{path}: not a loadable checkpoint ({type(e).__name__}: {first_line(e)})") from e
    if not isinstance(ckpt, dict) or "key" not in ckpt or "epoch" not in ckpt:
        raise UserError(f"{path}: not a vib-deploy training checkpoint")
    return ckpt
