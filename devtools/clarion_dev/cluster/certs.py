"""Certificates and keys for the local control plane, made with the openssl command line.

Every key is ECDSA P-256 (fast to generate; Go and Python both accept PKCS#8 PEM). Nothing here is
meant to leave the machine: the CA lives next to the etcd data and goes away with it.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

_DAYS = "3650"


class CertificateError(RuntimeError):
    """openssl is missing or refused to make a certificate."""


@dataclass(frozen=True)
class KeyPair:
    """A PEM certificate and its private key on disk."""

    cert: Path
    key: Path


def _openssl(*args: str) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        raise CertificateError("the openssl command is required to generate the control plane's certificates")
    result = subprocess.run([exe, *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise CertificateError(f"openssl {args[0]} failed: {result.stderr.strip()}")


def _new_key(path: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path))
    path.chmod(0o600)


def make_ca(directory: Path, common_name: str = "clarion-local-ca") -> KeyPair:
    """A self-signed certificate authority."""
    pair = KeyPair(directory / "ca.crt", directory / "ca.key")
    _new_key(pair.key)
    _openssl(
        "req", "-x509", "-new", "-key", str(pair.key), "-out", str(pair.cert), "-days", _DAYS,
        "-subj", f"/CN={common_name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
    )
    return pair


def issue(
    ca: KeyPair,
    directory: Path,
    name: str,
    *,
    common_name: str,
    organizations: tuple[str, ...] = (),
    server_names: tuple[str, ...] = (),
    server_ips: tuple[str, ...] = (),
) -> KeyPair:
    """A leaf certificate signed by `ca`: a server certificate when SANs are given, else a client one."""
    pair = KeyPair(directory / f"{name}.crt", directory / f"{name}.key")
    csr = directory / f"{name}.csr"
    ext = directory / f"{name}.ext"
    subject = "".join(f"/O={org}" for org in organizations) + f"/CN={common_name}"
    sans = [f"DNS:{n}" for n in server_names] + [f"IP:{ip}" for ip in server_ips]
    lines = [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        f"extendedKeyUsage={'serverAuth,clientAuth' if sans else 'clientAuth'}",
    ]
    if sans:
        lines.append("subjectAltName=" + ",".join(sans))
    ext.write_text("\n".join(lines) + "\n")
    _new_key(pair.key)
    _openssl("req", "-new", "-key", str(pair.key), "-out", str(csr), "-subj", subject)
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key), "-CAcreateserial",
        "-out", str(pair.cert), "-days", _DAYS, "-extfile", str(ext),
    )
    csr.unlink()
    ext.unlink()
    return pair


def make_signing_key(directory: Path, name: str = "service-account") -> KeyPair:
    """A key pair for signing service-account tokens; `cert` holds the public key."""
    pair = KeyPair(directory / f"{name}.pub", directory / f"{name}.key")
    _new_key(pair.key)
    _openssl("pkey", "-in", str(pair.key), "-pubout", "-out", str(pair.cert))
    return pair
