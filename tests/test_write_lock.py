"""The SQLite write lock serves the event loop's writes before a thread's next slice."""

from __future__ import annotations

import threading
import time

from quiver.server.storage.write_lock import WriteLock

SLICE = 0.01


def test_an_urgent_writer_waits_at_most_about_one_slice_of_a_busy_thread() -> None:
    lock = WriteLock()
    stop = threading.Event()
    slices = 0

    def writer() -> None:  # slice after slice, no pause in between
        nonlocal slices
        while not stop.is_set():
            lock.acquire()
            time.sleep(SLICE)
            slices += 1
            lock.release()

    thread = threading.Thread(target=writer)
    thread.start()
    waits = []
    try:
        time.sleep(SLICE * 3)
        for _ in range(20):
            started = time.perf_counter()
            lock.acquire(urgent=True)
            waits.append(time.perf_counter() - started)
            lock.release()
            time.sleep(SLICE / 2)
    finally:
        stop.set()
        thread.join()
    print(f"\nurgent waits: max {max(waits) * 1000:.1f} ms over {len(waits)}; slices {slices}")
    # A plain mutex lets the thread take it back again and again (seconds); here the urgent
    # acquirer gets it as soon as the current slice ends.
    assert max(waits) < 0.5
    assert slices >= 5


def test_release_without_acquire_is_an_error() -> None:
    lock = WriteLock()
    try:
        lock.release()
    except RuntimeError as exc:
        assert "not held" in str(exc)
    else:
        raise AssertionError("release() of a free lock must raise")
