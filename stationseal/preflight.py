"""Checks of the files and directories a configuration refers to, before anything starts.

A service that finds its CA file missing only when the first TLS handshake happens, or
its state directory unwritable only when the first batch commits, fails far from the
cause: a traceback in a journal, an exit code systemd restarts forever. Both the agent
and the ingest run these checks at start and in ``check-config``, collect every problem,
and stop with exit code 2 and one line per problem naming the setting and the path.

Each function returns ``None`` when the item is usable, else a message that starts with
the setting's name (``mqtt.tls.ca_file: /etc/x/ca.crt: no such file``). Warnings (a
secret readable by others) are returned by :func:`secret_mode_warning` separately: they
do not stop a service.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import stat
import tempfile
from pathlib import Path

__all__ = [
    "ca_file",
    "cert_and_key",
    "readable_file",
    "secret_file",
    "secret_mode_warning",
    "sm4_key_text",
    "writable_dir",
    "writable_file",
]


def _os_reason(e: OSError) -> str:
    return (e.strerror or str(e)).lower()


def readable_file(path: Path, what: str) -> str | None:
    """``path`` exists, is a regular file and can be opened for reading."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return f"{what}: {path}: no such file"
    except OSError as e:
        return f"{what}: {path}: {_os_reason(e)}"
    if stat.S_ISDIR(st.st_mode):
        return f"{what}: {path}: is a directory, not a file"
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as e:
        return f"{what}: {path}: cannot be read: {_os_reason(e)}"
    return None


def secret_file(path: Path, what: str) -> str | None:
    """A password, token or key file: readable and not empty (an empty password file
    is almost always a provisioning step that did not run)."""
    err = readable_file(path, what)
    if err is not None:
        return err
    try:
        if not path.read_text(encoding="utf-8").strip():
            return f"{what}: {path}: file is empty"
    except UnicodeDecodeError:
        return f"{what}: {path}: not UTF-8 text"
    except OSError as e:
        return f"{what}: {path}: cannot be read: {_os_reason(e)}"
    return None


def secret_mode_warning(path: Path, what: str) -> str | None:
    """A secret that group or others may read (key files are meant to be 0600)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    if mode & 0o077:
        return (f"{what}: {path}: mode {stat.S_IMODE(mode):04o} lets other accounts read "
                "it; use chmod 600")
    return None


def ca_file(path: Path, what: str) -> str | None:
    """A CA bundle that OpenSSL can load (a truncated PEM fails here, not at connect)."""
    err = readable_file(path, what)
    if err is not None:
        return err
    try:
        ssl.create_default_context(cafile=str(path))
    except ssl.SSLError as e:
        return f"{what}: {path}: not a usable CA certificate file: {e.reason or e}"
    except OSError as e:
        return f"{what}: {path}: {_os_reason(e)}"
    except ValueError as e:
        return f"{what}: {path}: {e}"
    return None


def cert_and_key(cert: Path | None, key: Path | None, what: str) -> list[str]:
    """A client certificate and its private key: both present, both loadable, a pair."""
    if cert is None and key is None:
        return []
    if cert is None or key is None:
        return [f"{what}: a client certificate needs both the certificate and the key file "
                f"(got only {'the key' if cert is None else 'the certificate'})"]
    errs = [e for e in (readable_file(cert, f"{what} certificate"),
                        readable_file(key, f"{what} key")) if e]
    if errs:
        return errs
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except ssl.SSLError as e:
        return [f"{what}: {cert} / {key}: certificate and key do not load as a pair: "
                f"{e.reason or e}"]
    except OSError as e:
        return [f"{what}: {cert} / {key}: {_os_reason(e)}"]
    return []


def _probe_dir(path: Path) -> str | None:
    try:
        fd, name = tempfile.mkstemp(prefix=".stationseal-probe-", dir=path)
    except OSError as e:
        return _os_reason(e)
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(name)
    return None


def writable_dir(path: Path, what: str) -> str | None:
    """A directory the service can create files in, or that it can create: a real
    write probe, because ``os.access`` says yes to root on a read-only filesystem."""
    p = path
    missing = False
    while True:
        try:
            st = p.stat()
            break
        except FileNotFoundError:
            missing = True
            if p.parent == p:
                return f"{what}: {path}: no existing parent directory"
            p = p.parent
        except OSError as e:
            return f"{what}: {path}: {_os_reason(e)}"
    if not stat.S_ISDIR(st.st_mode):
        where = "" if p == path else f" ({p} is not a directory)"
        return f"{what}: {path}: not a directory{where}"
    reason = _probe_dir(p)
    if reason is not None:
        if missing:
            return f"{what}: {path}: cannot be created in {p}: {reason}"
        return f"{what}: {path}: not writable: {reason}"
    return None


def writable_file(path: Path, what: str) -> str | None:
    """A file the service appends to: writable if it exists, else its directory is."""
    if path.exists():
        if path.is_dir():
            return f"{what}: {path}: is a directory, not a file"
        try:
            with open(path, "ab"):
                pass
        except OSError as e:
            return f"{what}: {path}: not writable: {_os_reason(e)}"
        return None
    return writable_dir(path.parent, what)


def sm4_key_text(text: str) -> str | None:
    """HJ 212-2025 SM4 keys are 128 bits written as 32 hex digits."""
    t = text.strip()
    if len(t) != 32:
        return f"must be 32 hex digits, got {len(t)} characters"
    try:
        bytes.fromhex(t)
    except ValueError:
        return "must be 32 hex digits (0-9, a-f)"
    return None
