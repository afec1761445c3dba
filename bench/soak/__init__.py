"""Crash loop: SIGKILL a real ``quiver serve`` again and again under load, then prove that
nothing an RPC reported as done was lost (DESIGN.md §5: "SIGKILL loses nothing that an RPC
reported as done").

    .venv/bin/python -m bench.soak --kills 20          # the soak (a few minutes)
    .venv/bin/python -m bench.soak --kills 3 --quick   # the short version (tests/test_soak.py)

Client tasks keep uploading mixed files (text, markdown, JSON, HTML, PDF, DOCX, and empty or
binary files that fail by design), attach them to stores in batches (with attributes, some
with static chunking, a few cancelled) and search, while a chaos task SIGKILLs the server
at random moments (``--seed``), sometimes while it is still starting up, and restarts it on
the same data directory and port. Only what the server confirmed is recorded: an
UploadFile that returned a File, a CreateFileBatch that returned a batch (a call whose reply
was lost is retried with the same ``request_id``, which must give the same batch), and
every file status a WatchFileBatch stream reported. After the last kill no new work is
created; once every batch has ended the server is stopped with SIGTERM (exit 0 expected)
and the data is checked, online and then straight from the SQLite file and index files:

(a) every confirmed upload is there, byte for byte (GetFile, DownloadFile sha256);
(b) every confirmed batch ended, its file_counts add up and match ListFileBatchFiles, the
    attributes and chunking sent are kept, retried request ids give the same batch, no
    status a watch stream reported was taken back, and no batch exists that was not asked for;
(c) every completed file has its chunks exactly once (0..n-1, no duplicates, none for
    unfinished files), each store's saved hnswlib index holds exactly the store's chunk ids,
    and a search for the file's unique token finds it;
(d) ``PRAGMA integrity_check`` is ok (plus the keyword indexes and foreign keys);
(e) failed files failed for the expected reason (empty → invalid_file, binary →
    unsupported_file); ``server_error`` only for a file whose batch lived through a kill,
    and then it is listed, not hidden;
plus: no RPC failed except while the server was killed, SIGTERM exits 0, and a clean
restart afterwards reconciles nothing, and no process of a killed server (its ingest
workers) outlives it: they die with it (PR_SET_PDEATHSIG).

The server runs with ``--index-save-interval 2`` (``--index-save-interval``), so kills land
before, during and after index saves, not only on indexes never saved.

After every third kill (``--damage-every``) one saved index is damaged while the server is
down, as a failing disk could: neighbour ids pointed out of range (this used to segfault the
first search), 4 KB of random bytes, a truncated file, or its checksum sidecar removed. The
restart must refuse it before hnswlib reads it and rebuild it from SQLite; checks (c) then
find every chunk in the saved index and every file by search.

Before every third kill (``--disk-full-every``) the disk fills up for a few seconds while
the load runs: the data dir lives on its own small tmpfs (``--tmpfs-size``, mounted when the
soak runs as root; otherwise the fault is skipped and the summary says why), and a ballast
file (``tests/support/tmpfs.py``) leaves 256 KiB free, filled just after a CreateFileBatch was sent.
Meanwhile writes must be refused with RESOURCE_EXHAUSTED / DISK_FULL (expected, and a
refused upload or batch is never counted as confirmed; a refused batch is asked again with
the same request id), ingest commits are retried, and once the ballast is gone everything
completes: the checks above hold as for kills, and any other failure is unexpected.

Prints a summary with PASS/FAIL per check; exits 1 when any check fails.
"""
