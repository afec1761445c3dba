"""A two-node Ray cluster on one machine, for ``make cluster-test``.

Ray rewrites loopback addresses, so each node lives in a network namespace of its own
(``ip netns``) with one address on a private /24: the head in one, a worker node in the
other, both joined to a bridge in the root namespace (a veth pair each), which also gives
this process a route to them. ``ray start --block`` runs each node (its own session
directory, token authentication off: the addresses exist only on this machine); stopping
the cluster kills both process groups and deletes the namespaces and the bridge.

Needs root (``ip netns add``) and the ``ray`` extra; ``cluster_missing()`` says why not.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

RAY_PORT = 6379
RAY_CLIENT_PORT = 10001
START_TIMEOUT = 120.0


def cluster_missing() -> str | None:
    """Why a cluster cannot start here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "no 'ip' command (iproute2)"
    try:
        import ray  # noqa: F401
    except ImportError:
        return "the ray extra is not installed"
    return None


def files_by_node(log: str) -> Counter[str]:
    """Files whose Ray task finished, by the node's address, from a server's JSON log (the
    line ``RayExecutor.close`` writes at a clean stop; summed over restarts)."""
    spread: Counter[str] = Counter()
    for line in log.splitlines():
        if not line.startswith("{"):
            continue
        entry = json.loads(line)
        if entry.get("msg") == "ingest on Ray: files by node":
            spread.update({str(k): int(v) for k, v in entry["nodes"].items()})
    return spread


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@dataclass
class RayCluster:
    tag: str
    subnet: str
    """The first three octets, e.g. ``10.231.42``."""
    root: Path
    env: dict[str, str]
    nodes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def head_ip(self) -> str:
        return f"{self.subnet}.1"

    @property
    def worker_ip(self) -> str:
        return f"{self.subnet}.2"

    @property
    def gcs_address(self) -> str:
        return f"{self.head_ip}:{RAY_PORT}"

    def namespace(self, node: str) -> str:
        return f"qr{node}{self.tag}"

    def in_node(self, node: str, command: list[str]) -> list[str]:
        """``command`` run inside node ``node``'s ("a": head, "b": worker) namespace."""
        return ["ip", "netns", "exec", self.namespace(node), *command]

    # -- life -----------------------------------------------------------------------------

    @classmethod
    def start(cls, cpus_per_node: int = 1, nodes: int = 2) -> RayCluster:
        """A head node ("a") and, with ``nodes=2``, a worker node ("b")."""
        tag = f"{os.getpid() % 100_000}"
        subnet = f"10.231.{random.randrange(10, 250)}"
        root = Path(tempfile.mkdtemp(prefix="qr", dir="/tmp"))  # short: Ray's socket paths
        env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
        env.pop("RAY_ADDRESS", None)
        cluster = cls(tag, subnet, root, env)
        try:
            cluster._network()
            cluster._node("a", head=True, cpus=cpus_per_node)
            cluster.wait_for_nodes(1)
            if nodes == 2:
                cluster._node("b", head=False, cpus=cpus_per_node)
                cluster.wait_for_nodes(2)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _network(self) -> None:
        bridge = f"qrbr{self.tag}"
        _ip("link", "add", bridge, "type", "bridge")
        _ip("addr", "add", f"{self.subnet}.254/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for index, node in enumerate(("a", "b"), start=1):
            ns, outside, inside = self.namespace(node), f"v{node}{self.tag}", f"p{node}{self.tag}"
            _ip("netns", "add", ns)
            _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            _ip("link", "set", inside, "netns", ns)
            _ip("link", "set", outside, "master", bridge, "up")
            _ip("-n", ns, "addr", "add", f"{self.subnet}.{index}/24", "dev", inside)
            _ip("-n", ns, "link", "set", inside, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "route", "add", "default", "via", f"{self.subnet}.254")

    def _node(self, node: str, *, head: bool, cpus: int) -> None:
        ray = str(Path(sys.executable).with_name("ray"))
        ip = self.head_ip if head else self.worker_ip
        command = [
            ray,
            "start",
            "--block",
            f"--temp-dir={self.root / node}",
            f"--node-ip-address={ip}",
            f"--num-cpus={cpus}",
            "--disable-usage-stats",
        ]
        if head:
            command += ["--head", f"--port={RAY_PORT}", "--include-dashboard=false"]
            command += [f"--ray-client-server-port={RAY_CLIENT_PORT}"]
        else:
            command += [f"--address={self.gcs_address}"]
        log = open(self.root / f"{node}.log", "wb")  # noqa: SIM115 (the process keeps it)
        self.nodes[node] = subprocess.Popen(
            self.in_node(node, command),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )
        log.close()

    def alive_nodes(self) -> int:
        """Nodes the head reports alive (``ray status``), 0 if it does not answer."""
        ray = str(Path(sys.executable).with_name("ray"))
        status = subprocess.run(
            self.in_node("a", [ray, "status", f"--address={self.gcs_address}"]),
            capture_output=True,
            env=self.env,
            timeout=60,
        )
        text = status.stdout.decode(errors="replace")
        active = text.split("Active:", 1)[-1].split("Pending:", 1)[0] if "Active:" in text else ""
        return sum(1 for line in active.splitlines() if "node_" in line)

    def wait_for_nodes(self, count: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while self.alive_nodes() < count:
            for node, proc in self.nodes.items():
                if proc.poll() is not None:
                    log = (self.root / f"{node}.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"Ray node {node} exited: {log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"fewer than {count} Ray nodes after {START_TIMEOUT:g} s")
            time.sleep(1)

    def serve_on_head(
        self, port: int, data_dir: Path, api_keys: str, log: Path, ray_tasks: int = 2
    ) -> subprocess.Popen[bytes]:
        """``quiver serve --ingest ray:auto`` in the head's namespace on ``head_ip:port``, a
        driver of the cluster (RAY_ADDRESS = the head's GCS); keyed, so ``--insecure``."""
        command = [sys.executable, "-m", "quiver.server.cli", "serve"]
        command += ["--listen", f"{self.head_ip}:{port}", "--http-listen", "off"]
        command += ["--data-dir", str(data_dir), "--api-keys", api_keys, "--insecure"]
        command += ["--ingest", "ray:auto", "--ray-tasks", str(ray_tasks)]
        env = {**self.env, "RAY_ADDRESS": self.gcs_address}
        with open(log, "wb") as out:
            return subprocess.Popen(
                self.in_node("a", command), stdout=out, stderr=subprocess.STDOUT, env=env
            )

    def pids(self, node: str) -> list[int]:
        """Every process in the node's namespace."""
        listed = subprocess.run(
            ["ip", "netns", "pids", self.namespace(node)], capture_output=True, timeout=30
        )
        return [int(p) for p in listed.stdout.split()]

    def signal_node(self, node: str, signum: signal.Signals) -> list[int]:
        """Sends ``signum`` to every process of the node; their pids."""
        pids = self.pids(node)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
        return pids

    def kill_node_while(self, node: str, running: Callable[[set[int]], bool]) -> bool:
        """SIGKILLs every process of the node if ``running(its pids)`` holds while they are
        all stopped (SIGSTOP: nothing there finishes between the look and the kill), and
        says so; else lets them go on (SIGCONT) and returns False."""
        pids = set(self.signal_node(node, signal.SIGSTOP))
        if running(pids):
            self.kill_node(node)
            return True
        self.signal_node(node, signal.SIGCONT)
        return False

    def kill_node(self, node: str) -> None:
        """SIGKILLs every process of the node (``ray start`` and all it started)."""
        for pid in self.pids(node):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.nodes[node].wait(10)

    def stop(self) -> None:
        for proc in self.nodes.values():
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        for proc in self.nodes.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        for node in ("a", "b"):
            for pid in self.pids(node):  # what outlived its ``ray start``
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", self.namespace(node)], capture_output=True)
        subprocess.run(["ip", "link", "del", f"qrbr{self.tag}"], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)
