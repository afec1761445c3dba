"""The chaos task: SIGKILLs at chosen moments, disk-full episodes, index damage."""

from __future__ import annotations

import asyncio
import random

from bench.soak.damage import damage_an_index
from bench.soak.disk import DISK_FULL_LEAVE
from bench.soak.load import Soak


async def chaos(load: Soak) -> None:
    """``kills`` SIGKILLs at random moments; returns with the server SERVING again."""
    rng = random.Random(f"{load.options.seed}-chaos")
    damage_rng = random.Random(f"{load.options.seed}-damage")  # kill times stay as they were
    disk_rng = random.Random(f"{load.options.seed}-disk")
    every_full = load.options.disk_full_every if load.disk.mounted else 0
    for i in range(load.options.kills):
        disk_full = bool(every_full) and (i + 1) % every_full == 0
        if i > 0 and rng.random() < load.profile.startup_kill_chance and not disk_full:
            await asyncio.sleep(rng.uniform(0.05, 1.0))  # after the previous start
            moment = "during start-up"
        else:
            await load.server.wait_serving(load.profile.start_timeout)
            if disk_full:
                await disk_full_episode(load, disk_rng, i + 1)
            await asyncio.sleep(rng.uniform(*load.profile.kill_after))
            moment = await pick_moment(load, rng)
        load.disk.note_usage()
        await load.server.kill(moment, load.in_flight, load.open_batches())
        every = load.options.damage_every
        if every and (i + 1) % every == 0:
            load.server.kills[-1] += "; then " + damage_an_index(
                damage_rng, load.server.data_dir / "indexes"
            )
        load.server.start()
    await load.server.wait_serving(load.profile.start_timeout)


async def disk_full_episode(load: Soak, rng: random.Random, kill: int) -> None:
    """Fills the disk for a few seconds while the load runs, then gives the space back.
    It fills just after a CreateFileBatch was sent (when one comes within 5 s), so that
    batch's files are processed, and their commits retried, on the full disk."""
    await load.next_rpc("CreateFileBatch", timeout=5.0)
    await asyncio.sleep(rng.uniform(0.02, 0.2))
    refused_before = sum(load.refused.values())
    seconds = rng.uniform(*load.options.disk_full_seconds)
    open_batches = load.open_batches()
    filled_in, ballast = await load.disk.fill_for(seconds)
    load.disk.events.append(
        f"before kill {kill}: disk full ({ballast / 2**20:.1f} MiB ballast, filled in "
        f"{filled_in:.2f} s, {DISK_FULL_LEAVE // 1024} KiB left) for {seconds:.1f} s, "
        f"{open_batches} batches unfinished; "
        f"{sum(load.refused.values()) - refused_before} RPCs refused with DISK_FULL"
    )


async def pick_moment(load: Soak, rng: random.Random) -> str:
    """Sometimes waits for a sharper moment to kill at; says which one it was."""
    target = rng.random()
    chance = load.profile.in_rpc_kill_chance
    if target < chance:
        # Right after an RPC went out: its reply is likely lost, and the work behind it
        # may or may not be committed.
        method = rng.choice(("UploadFile", "CreateFileBatch", "CancelFileBatch", ""))
        sent = await load.next_rpc(method, timeout=5.0)
        if sent is not None:
            await asyncio.sleep(rng.uniform(0.0, 0.003))
            return f"just after a {sent} was sent"
    elif target < 2 * chance and await load.unfinished_batch(timeout=5.0):
        await asyncio.sleep(rng.uniform(0.0, 0.2))
        return "while batches were processed"
    return "serving"
