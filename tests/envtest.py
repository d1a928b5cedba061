"""A control plane from envtest's binaries (``KUBEBUILDER_ASSETS``): etcd and kube-apiserver, and
kube-controller-manager when the folder has it, on free 127.0.0.1 ports, state in a folder of its own.

The API server runs as in a real cluster where the tests can tell: RBAC, the default admission plugins, a
service-account issuer that signs pod-bound tokens (TokenRequest), TokenReview."""

from __future__ import annotations

import base64
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

SERVICE_CIDR = "10.0.0.0/24"
ISSUER = "https://kubernetes.default.svc.cluster.local"


def start_from_assets(assets: Path, state: Path) -> tuple[Path, Callable[[], None], bool]:
    """Start the control plane; return its admin kubeconfig, a function that stops it, and whether the
    controllers (kube-controller-manager) run."""
    for binary in ("etcd", "kube-apiserver", "kubectl"):
        if not (assets / binary).is_file():
            raise FileNotFoundError(f"KUBEBUILDER_ASSETS={assets} has no {binary}")
    pki = _make_pki(state / "pki")
    client, peer, api = _free_ports(3)
    processes: list[subprocess.Popen] = []

    def start(name: str, *args: str) -> None:
        log = (state / f"{name}.log").open("w")
        processes.append(subprocess.Popen([str(assets / name), *args], stdout=log, stderr=subprocess.STDOUT))

    def stop() -> None:
        for process in reversed(processes):
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(state, ignore_errors=True)

    try:
        start("etcd", "--data-dir", str(state / "etcd"), "--listen-client-urls", f"http://127.0.0.1:{client}",
              "--advertise-client-urls", f"http://127.0.0.1:{client}", "--listen-peer-urls",
              f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
              "--initial-cluster", f"default=http://127.0.0.1:{peer}", "--log-level", "warn")
        start("kube-apiserver", "--bind-address=127.0.0.1", f"--secure-port={api}", "--advertise-address=127.0.0.1",
              f"--etcd-servers=http://127.0.0.1:{client}", f"--tls-cert-file={pki / 'apiserver.crt'}",
              f"--tls-private-key-file={pki / 'apiserver.key'}", f"--client-ca-file={pki / 'ca.crt'}",
              f"--service-account-issuer={ISSUER}", f"--service-account-key-file={pki / 'sa.pub'}",
              f"--service-account-signing-key-file={pki / 'sa.key'}", f"--service-cluster-ip-range={SERVICE_CIDR}",
              "--authorization-mode=RBAC", "--endpoint-reconciler-type=none")
        kubeconfig = _kubeconfig(state / "kubeconfig", api, pki)
        _wait_ready(api, pki)
        controllers = (assets / "kube-controller-manager").is_file()
        if controllers:
            start("kube-controller-manager", "--bind-address=127.0.0.1", f"--secure-port={_free_ports(1)[0]}",
                  f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
                  f"--authorization-kubeconfig={kubeconfig}", "--use-service-account-credentials=true",
                  "--leader-elect=false", f"--root-ca-file={pki / 'ca.crt'}",
                  f"--service-account-private-key-file={pki / 'sa.key'}",
                  f"--cluster-signing-cert-file={pki / 'ca.crt'}", f"--cluster-signing-key-file={pki / 'ca.key'}",
                  f"--service-cluster-ip-range={SERVICE_CIDR}")
    except BaseException:
        stop()
        raise
    return kubeconfig, stop, controllers


def _make_pki(pki: Path) -> Path:
    """A CA, the API server's serving certificate, an admin client certificate (system:masters) and the
    service-account key pair, made with openssl."""
    pki.mkdir(parents=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=pki, check=True, capture_output=True)

    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.crt", "-days", "30", "-subj", "/CN=envtest-ca",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    for name, subject, extensions in (
        ("apiserver", "/CN=kube-apiserver", "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,"
                                            "IP:127.0.0.1,IP:10.0.0.1,DNS:kubernetes.default.svc"),
        ("admin", "/O=system:masters/CN=envtest-admin", "extendedKeyUsage=clientAuth"),
    ):
        (pki / f"{name}.ext").write_text(extensions + "\n")
        openssl("req", "-new", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "30", "-extfile", f"{name}.ext", "-out", f"{name}.crt")
    openssl("genrsa", "-out", "sa.key", "2048")
    openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub")
    return pki


def _kubeconfig(path: Path, port: int, pki: Path) -> Path:
    def data(name: str) -> str:
        return base64.b64encode((pki / name).read_bytes()).decode()

    path.write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: envtest, cluster: {{server: "https://127.0.0.1:{port}", certificate-authority-data: {data("ca.crt")}}}}}]
users: [{{name: admin, user: {{client-certificate-data: {data("admin.crt")}, client-key-data: {data("admin.key")}}}}}]
contexts: [{{name: envtest, context: {{cluster: envtest, user: admin}}}}]
current-context: envtest
""")
    return path


def _wait_ready(port: int, pki: Path, timeout: float = 120) -> None:
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    context.load_cert_chain(pki / "admin.crt", pki / "admin.key")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{port}/readyz", context=context, timeout=5) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"kube-apiserver on 127.0.0.1:{port} was not ready within {timeout:.0f} s")
        time.sleep(0.2)


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports
