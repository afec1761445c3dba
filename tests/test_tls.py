"""TLS and mutual TLS: `quiver serve --tls-*` with the real grpcurl, the Python client, the CLI,
the plaintext rule for API keys, and certificates reloaded while serving."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from quiver.client import Client
from quiver.client.errors import UnavailableError
from quiver.server import config
from quiver.server.app import ConfigError, QuiverServer
from quiver.server.config import Settings
from quiver.server.tls import CertificateFiles

from tests.certs import Authority, Pem
from tests.conftest import keyed
from tests.test_e2e_grpcurl import GRPCURL, Served, clean_env, kill_quietly, start_serve, terminate


class Pki:
    def __init__(self, root: Path) -> None:
        self.ca = Authority(root / "ca", "quiver-test-ca")
        self.server = self.ca.issue("server", server=True)
        self.client = self.ca.issue("client", server=False)
        self.other_ca = Authority(root / "other", "someone-else-ca")
        self.stranger = self.other_ca.issue("stranger", server=False)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def grpcurl_tls(
    address: str, *positional: str, flags: Sequence[str] = (), key: str = ""
) -> subprocess.CompletedProcess[str]:
    auth = ["-H", f"authorization: Bearer {key}"] if key else []
    return subprocess.run(
        [str(GRPCURL), "-max-time", "10", *auth, *flags, address, *positional],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def wait_serving_tls(served: Served, flags: Sequence[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if served.proc.poll() is not None:
            pytest.fail(f"quiver serve exited with {served.proc.returncode}:\n{served.logs()}")
        done = grpcurl_tls(served.address, "grpc.health.v1.Health/Check", flags=flags)
        last = done.stdout + done.stderr
        if done.returncode == 0 and json.loads(done.stdout).get("status") == "SERVING":
            return
        time.sleep(0.2)
    pytest.fail(f"not SERVING over TLS within {timeout} s; last answer: {last}\n{served.logs()}")


def make_key(keys_file: Path) -> str:
    made = subprocess.run(
        [sys.executable, "-m", "quiver.server.cli", "keys", "add", "tls", "--file", str(keys_file)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        env=clean_env(),
    )
    return made.stdout.strip()


def serve_tls(root: Path, pki: Pki, *extra: str) -> Iterator[Served]:
    keys_file = root / "keys"
    key = make_key(keys_file)
    served = start_serve(
        root / "data",
        root / "serve.log",
        "--api-keys-file",
        str(keys_file),
        "--tls-cert",
        str(pki.server.cert),
        "--tls-key",
        str(pki.server.key),
        *extra,
    )
    served.key = key
    try:
        yield served
    finally:
        try:
            if served.proc.poll() is None:
                assert terminate(served) == 0
        finally:
            kill_quietly(served)


@pytest.fixture(scope="module")
def tls_served(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Served]:
    for served in serve_tls(tmp_path_factory.mktemp("tls"), pki):
        wait_serving_tls(served, ["-cacert", str(pki.ca.cert)])
        yield served


@pytest.fixture(scope="module")
def mtls_served(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Served]:
    for served in serve_tls(
        tmp_path_factory.mktemp("mtls"), pki, "--tls-client-ca", str(pki.ca.cert)
    ):
        wait_serving_tls(
            served,
            [
                "-cacert",
                str(pki.ca.cert),
                "-cert",
                str(pki.client.cert),
                "-key",
                str(pki.client.key),
            ],
        )
        yield served


@pytest.mark.e2e
def test_grpcurl_over_tls(tls_served: Served, pki: Pki) -> None:
    ca = ["-cacert", str(pki.ca.cert)]
    listed = grpcurl_tls(tls_served.address, "list", flags=ca)
    assert listed.returncode == 0, listed.stderr
    assert "quiver.v1.VectorStoreService" in listed.stdout.split()
    created = grpcurl_tls(
        tls_served.address,
        "quiver.v1.VectorStoreService/CreateVectorStore",
        flags=[*ca, "-d", '{"name":"over-tls"}'],
        key=tls_served.key,
    )
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["vector_store"]["name"] == "over-tls"

    plaintext = grpcurl_tls(tls_served.address, "list", flags=["-plaintext"])
    assert plaintext.returncode != 0
    untrusted = grpcurl_tls(tls_served.address, "list", flags=["-cacert", str(pki.other_ca.cert)])
    assert untrusted.returncode != 0
    assert "certificate" in untrusted.stderr.lower()


@pytest.mark.e2e
def test_grpcurl_over_mutual_tls(mtls_served: Served, pki: Pki) -> None:
    ca = ["-cacert", str(pki.ca.cert)]
    client = ["-cert", str(pki.client.cert), "-key", str(pki.client.key)]
    done = grpcurl_tls(
        mtls_served.address,
        "quiver.v1.VectorStoreService/CreateVectorStore",
        flags=[*ca, *client, "-d", '{"name":"over-mtls"}'],
        key=mtls_served.key,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["vector_store"]["name"] == "over-mtls"

    anonymous = grpcurl_tls(mtls_served.address, "list", flags=ca)
    assert anonymous.returncode != 0  # no client certificate: the handshake is refused
    stranger = ["-cert", str(pki.stranger.cert), "-key", str(pki.stranger.key)]
    refused = grpcurl_tls(mtls_served.address, "list", flags=[*ca, *stranger])
    assert refused.returncode != 0  # a certificate from another CA


@pytest.mark.e2e
def test_python_client_and_cli_over_mutual_tls(mtls_served: Served, pki: Pki) -> None:
    with Client(
        target=mtls_served.address,
        api_key=mtls_served.key,
        root_certificates=pki.ca.cert,
        certificate_chain=pki.client.cert,
        private_key=pki.client.key,
        max_retries=0,
    ) as client:
        store = client.vector_stores.create(name="py-mtls")
        assert client.vector_stores.retrieve(store.id).name == "py-mtls"
    env = {**clean_env(), "QUIVER_API_KEY": mtls_served.key}
    base = [sys.executable, "-m", "quiver.client.cli", "--target", mtls_served.address]
    tls = ["--tls-ca", str(pki.ca.cert), "--tls-cert", str(pki.client.cert)]
    tls += ["--tls-key", str(pki.client.key)]
    done = subprocess.run(
        [*base, *tls, "stores", "create", "--name", "cli-mtls", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["name"] == "cli-mtls"
    half = subprocess.run(
        [*base, "--tls-cert", str(pki.client.cert), "stores", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert half.returncode == 2
    assert "private_key" in half.stderr
    # A fresh process (grpc shares connections between channels of one process): without a
    # client certificate the server refuses the handshake, so the server is unreachable.
    anonymous = subprocess.run(
        [*base, "--tls-ca", str(pki.ca.cert), "--timeout", "5", "stores", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert anonymous.returncode == 4, anonymous.stderr


def test_python_client_tls_env_variables(
    tls_served: Served, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QUIVER_TLS_CA", str(pki.ca.cert))
    with Client(target=tls_served.address, api_key=tls_served.key, max_retries=0) as client:
        assert client.vector_stores.create(name="env-ca").name == "env-ca"


# -- the rules for API keys over plaintext -------------------------------------------------------


def test_keys_over_plaintext_on_a_public_address_are_refused(tmp_path: Path) -> None:
    settings, _ = keyed(
        Settings(http_listen="127.0.0.1:0", listen="0.0.0.0:0", data_dir=tmp_path / "data")
    )
    with pytest.raises(ConfigError, match=r"clear text.*--insecure"):
        QuiverServer(settings)
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("how", ["insecure", "tls"])
async def test_keys_on_a_public_address_with_tls_or_insecure(
    tmp_path: Path, pki: Pki, how: str
) -> None:
    settings, keys = keyed(
        Settings(http_listen="127.0.0.1:0", listen="0.0.0.0:0", data_dir=tmp_path / "data")
    )
    if how == "insecure":
        settings = replace(settings, insecure=True)
    else:
        settings = replace(settings, tls_cert=pki.server.cert, tls_key=pki.server.key)
    server = QuiverServer(settings)
    port = await server.start()
    try:
        credentials = grpc.ssl_channel_credentials(pki.ca.cert_bytes) if how == "tls" else None
        from quiver.client import AsyncClient

        async with AsyncClient(
            target=f"localhost:{port}",
            api_key=keys["alice"],
            root_certificates=pki.ca.cert_bytes if credentials else None,
            max_retries=0,
        ) as client:
            assert (await client.vector_stores.create(name=how)).name == how
    finally:
        await server.stop(grace=1.0)


@pytest.mark.parametrize(
    ("cert", "key", "ca", "message"),
    [
        ("server", None, None, "--tls-key is missing"),
        (None, "server", None, "--tls-cert is missing"),
        (None, None, "ca", "--tls-client-ca needs --tls-cert"),
        ("server", "client", None, "do not load as a pair"),
        ("server", "server", "key", "not a PEM CA bundle"),
        ("absent", "server", None, "cannot read --tls-cert"),
    ],
)
def test_bad_tls_settings_are_refused_with_the_flag_named(
    tmp_path: Path, pki: Pki, cert: str | None, key: str | None, ca: str | None, message: str
) -> None:
    paths = {
        "server": (pki.server.cert, pki.server.key),
        "client": (pki.client.cert, pki.client.key),
        "absent": (tmp_path / "absent.pem", tmp_path / "absent.key"),
    }
    settings = Settings(
        http_listen="127.0.0.1:0",
        listen="127.0.0.1:0",
        data_dir=tmp_path / "data",
        tls_cert=paths[cert][0] if cert else None,
        tls_key=paths[key][1] if key else None,
        tls_client_ca=pki.ca.cert if ca == "ca" else (pki.server.key if ca else None),
    )
    with pytest.raises(ConfigError, match=message):
        QuiverServer(settings)


def test_serve_exits_2_naming_the_tls_problem(tmp_path: Path, pki: Pki) -> None:
    done = subprocess.run(
        [
            *(sys.executable, "-m", "quiver.server.cli", "serve", "--listen", "127.0.0.1:0"),
            *("--data-dir", str(tmp_path / "d"), "--tls-cert", str(pki.server.cert)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
        check=False,
    )
    assert done.returncode == 2
    assert "--tls-key is missing" in done.stderr


# -- certificates replaced while serving ----------------------------------------------------------


def _copy(pem: Pem, into: Path) -> Pem:
    target = Pem(into / "tls.crt", into / "tls.key")
    # Key first, then the certificate: a reader between the two sees a pair that does not
    # match, and keeps the previous one.
    for source, dest in ((pem.key, target.key), (pem.cert, target.cert)):
        temp = dest.with_suffix(".tmp")
        shutil.copyfile(source, temp)
        os.replace(temp, dest)
    return target


async def test_replaced_certificate_files_are_served_to_new_connections(
    tmp_path: Path, pki: Pki
) -> None:
    from quiver.client import AsyncClient

    live = tmp_path / "live"
    live.mkdir()
    files = _copy(pki.server, live)
    settings, keys = keyed(
        Settings(
            http_listen="127.0.0.1:0",
            listen="127.0.0.1:0",
            data_dir=tmp_path / "data",
            tls_cert=files.cert,
            tls_key=files.key,
        )
    )
    server = QuiverServer(settings)
    port = await server.start()

    async def creates(ca: bytes, name: str) -> bool:
        async with AsyncClient(
            target=f"localhost:{port}",
            api_key=keys["alice"],
            root_certificates=ca,
            max_retries=0,
            timeout=5,
        ) as client:
            try:
                await client.vector_stores.create(name=name)
            except UnavailableError:
                return False
            return True

    try:
        assert await creates(pki.ca.cert_bytes, "before")
        assert not await creates(pki.other_ca.cert_bytes, "other-before")
        rotated = pki.other_ca.issue("rotated", server=True)
        await asyncio.sleep(0.01)  # a distinct mtime even on coarse file systems
        _copy(rotated, live)
        assert await creates(pki.other_ca.cert_bytes, "after")
        assert not await creates(pki.ca.cert_bytes, "old-after")
        assert server.certificates is not None and server.certificates.reloads == 1

        # A broken replacement keeps the current certificate in service.
        (live / "tls.crt").write_text("not a certificate")
        assert await creates(pki.other_ca.cert_bytes, "after-broken")
    finally:
        await server.stop(grace=1.0)


def test_sighup_rereads_unchanged_files_and_a_change_is_noticed(pki: Pki, tmp_path: Path) -> None:
    live = tmp_path / "live"
    live.mkdir()
    files = _copy(pki.server, live)
    certificates = CertificateFiles(files.cert, files.key)
    assert certificates.fetch() is None  # nothing changed: grpc keeps what it has
    certificates.request_reload()  # SIGHUP
    assert certificates.fetch() is not None
    assert certificates.fetch() is None
    assert certificates.reloads == 1


def test_tls_flags_and_their_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUIVER_TLS_CERT", "/etc/quiver/tls.crt")
    monkeypatch.setenv("QUIVER_INSECURE", "yes")
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    settings = config.from_namespace(parser.parse_args(["--tls-key", "/etc/quiver/tls.key"]))
    assert settings.tls_cert == Path("/etc/quiver/tls.crt")
    assert settings.tls_key == Path("/etc/quiver/tls.key")
    assert settings.tls_client_ca is None and settings.insecure is True
    monkeypatch.setenv("QUIVER_INSECURE", "0")
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    assert config.from_namespace(parser.parse_args([])).insecure is False
    assert config.from_namespace(parser.parse_args(["--insecure"])).insecure is True
    monkeypatch.setenv("QUIVER_INSECURE", "maybe")
    with pytest.raises(SystemExit, match="QUIVER_INSECURE must be one of"):
        config.add_arguments(argparse.ArgumentParser())
    help_text = argparse.ArgumentParser()
    monkeypatch.delenv("QUIVER_INSECURE")
    config.add_arguments(help_text)
    shown = help_text.format_help()
    for flag in ("--tls-cert", "--tls-key", "--tls-client-ca", "--insecure", "--reload-interval"):
        assert flag in shown
