"""The key registry: a signed, versioned, append-only document (docs/wire-format.md §9).

Who may sign for what is decided by the **registry authority**, not by whoever can write
the registry file. The document carries its full change log (keys added, keys revoked),
each change hash-chained to the one before, a serial number that only grows, and an
Ed25519 signature by the authority over a canonical JSON rendering. A verifier pins the
authority's public key (or its SHA-256 fingerprint) and needs nothing else: an
enforcement officer can take the frames file, this document and the fingerprint to a
court expert.

Each key is bound to one gateway, to the site(s) it may report for and, optionally, to
the instrument ids it may speak for. Validity in time is judged on the frame's creation
time *and*, when known, on the time the central side first received it, because whoever
holds a retired key also holds the clock that stamps ``created_ms``.

Times are integer milliseconds since the Unix epoch and no value is a float, so the
signed bytes are reproducible from the specification alone.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from stationseal.frame import NAME_RE, Frame
from stationseal.records import to_rfc3339
from stationseal.signing import (
    ALG_IDS,
    SigningError,
    key_id_for,
    load_public_key,
    public_key_raw,
    write_private_key,
)

FORMAT = "stationseal-registry/1"
#: Prefixes of the signed and the hashed bytes: a registry signature or change hash can
#: never be mistaken for one over another kind of document.
SIGNING_PREFIX = b"stationseal-registry/1\n"
CHANGE_PREFIX = b"stationseal-registry-change/1\n"
ZERO_HASH_HEX = "0" * 64
REVOCATION_REASONS = ("compromised", "retired", "superseded", "decommissioned")
#: Largest integer in a registry (JSON numbers beyond it lose precision in many parsers).
MAX_INT = 2**53 - 1
#: Default backfill horizon of a gateway: the agent's default outbox max_age_s (30 days).
DEFAULT_BACKFILL_S = 30 * 86400
MAX_BACKFILL_S = 366 * 86400
#: Instrument name of the gateway's own events; always permitted.
GATEWAY_INSTRUMENT = "gateway"
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")

PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey


class RegistryError(Exception):
    """A registry document, change or pin that cannot be used; the message names the file
    and the entry."""


class KeyLookupError(Exception):
    """Why a frame's key cannot be accepted; ``reason`` is a verification reason name."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# --------------------------------------------------------------------------- canonical JSON


def canonical_json(obj: Any) -> bytes:
    """RFC 8785 (JCS) for the values a registry holds: objects with ASCII keys (sorted),
    arrays, strings, integers with magnitude at most 2^53-1, true, false, null. No floats:
    their rendering is where JSON implementations disagree."""
    _check_canonical_value(obj, "$")
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":"),
                      allow_nan=False).encode("utf-8")


def _check_canonical_value(v: Any, where: str) -> None:
    t = type(v)
    if t is dict:
        for k, x in v.items():
            if type(k) is not str or not k.isascii():
                raise RegistryError(f"{where}: member name {k!r} is not ASCII text")
            _check_canonical_value(x, f"{where}.{k}")
    elif t is list:
        for i, x in enumerate(v):
            _check_canonical_value(x, f"{where}[{i}]")
    elif t is int:
        if not -MAX_INT <= v <= MAX_INT:
            raise RegistryError(f"{where}: integer {v} beyond 2^53-1")
    elif t is str:
        if any(0xD800 <= ord(c) <= 0xDFFF for c in v):
            raise RegistryError(f"{where}: lone surrogate in text")
    elif v is not None and t is not bool:
        raise RegistryError(f"{where}: {t.__name__} values do not occur in a registry")


def change_hash(change: dict[str, Any]) -> str:
    return hashlib.sha256(CHANGE_PREFIX + canonical_json(change)).hexdigest()


# --------------------------------------------------------------------------- authority


def fingerprint(pub: ed25519.Ed25519PublicKey) -> str:
    """SHA-256 of the raw 32-byte public key, 64 hex digits (its first 16 are the key id)."""
    return hashlib.sha256(public_key_raw(pub)).hexdigest()


class Authority:
    """The registry authority's signing key (Ed25519). Keep it off the central servers:
    whoever holds it decides which keys may sign for which site."""

    def __init__(self, key: ed25519.Ed25519PrivateKey):
        self._key = key
        self.public_key = key.public_key()
        self.fingerprint = fingerprint(self.public_key)
        self.key_id = self.fingerprint[:16]

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    def public_pem(self) -> bytes:
        return self.public_key.public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)

    @classmethod
    def generate(cls, key_path: str | Path, pub_path: str | Path | None = None) -> Authority:
        """Write a new authority key (PKCS#8 PEM, created 0600) and its public key."""
        kp = Path(key_path)
        kp.parent.mkdir(parents=True, exist_ok=True)
        key = ed25519.Ed25519PrivateKey.generate()
        write_private_key(kp, key.private_bytes(serialization.Encoding.PEM,
                                                serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
        auth = cls(key)
        pp = Path(pub_path) if pub_path is not None else default_public_path(kp)
        pp.write_bytes(auth.public_pem())
        return auth

    @classmethod
    def load(cls, key_path: str | Path) -> Authority:
        from stationseal.signing import load_signer

        p = Path(key_path)
        try:
            signer = load_signer(p)  # refuses a key file readable by others
        except SigningError as e:
            raise RegistryError(str(e)) from None
        key = getattr(signer, "_key", None)
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise RegistryError(f"{p}: the registry authority key must be Ed25519")
        return cls(key)

    @classmethod
    def beside(cls, registry_path: str | Path) -> Authority:
        """The authority key kept next to a registry file (``<registry>.authority.key``),
        created on first use. For demos and tests only: in production the authority key
        lives offline and is passed explicitly."""
        kp = Path(str(registry_path) + ".authority.key")
        if kp.exists():
            return cls.load(kp)
        return cls.generate(kp, authority_pub_path(registry_path))


def default_public_path(key_path: Path) -> Path:
    name = key_path.name[:-4] if key_path.name.endswith(".key") else key_path.name
    return key_path.with_name(name + ".pub.pem")


def authority_pub_path(registry_path: str | Path) -> Path:
    """Where :meth:`Authority.beside` writes the public key: ``<registry>.authority.pub.pem``."""
    return Path(str(registry_path) + ".authority.pub.pem")


@dataclass(frozen=True, slots=True)
class AuthorityPin:
    """What a verifier trusts: the authority's public key, or only its fingerprint (the
    document names its public key; the pin must match it)."""

    fingerprint: str
    public_key: ed25519.Ed25519PublicKey | None = None

    @classmethod
    def parse(cls, spec: str | Path | AuthorityPin | ed25519.Ed25519PublicKey) -> AuthorityPin:
        """A PEM file path, ``sha256:<64 hex>`` / ``<64 hex>``, or a public key."""
        if isinstance(spec, AuthorityPin):
            return spec
        if isinstance(spec, ed25519.Ed25519PublicKey):
            return cls(fingerprint(spec), spec)
        s = str(spec).strip()
        hx = s[7:] if s.startswith("sha256:") else s
        if _HEX64.match(hx.lower()) and not Path(s).exists():
            return cls(hx.lower())
        p = Path(s)
        try:
            pem = p.read_bytes()
        except OSError as e:
            raise RegistryError(f"registry authority {s}: neither a readable public key file "
                                f"nor a sha256 fingerprint ({e.strerror})") from None
        try:
            key = serialization.load_pem_public_key(pem)
        except ValueError as e:
            raise RegistryError(f"{p}: not a PEM public key: {e}") from None
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise RegistryError(f"{p}: the registry authority key must be Ed25519")
        return cls(fingerprint(key), key)


# --------------------------------------------------------------------------- key entries


@dataclass(slots=True)
class KeyEntry:
    """A key's state after every change of the registry was applied."""

    gateway_id: str
    key_id: str
    alg: str
    public_key_raw: bytes
    sites: tuple[str, ...]
    instruments: tuple[str, ...] | None
    valid_from_ms: int
    valid_until_ms: int | None
    backfill_s: int
    added_in: int
    revoked_at_ms: int | None = None
    revocation_reason: str | None = None
    revoked_in: int | None = None
    public: PublicKey | None = field(default=None, repr=False)

    # Seconds, for callers that work in float time.
    @property
    def valid_from(self) -> float:
        return self.valid_from_ms / 1000

    @property
    def valid_until(self) -> float | None:
        return None if self.valid_until_ms is None else self.valid_until_ms / 1000

    @property
    def revoked_at(self) -> float | None:
        return None if self.revoked_at_ms is None else self.revoked_at_ms / 1000

    @property
    def public_key(self) -> str:
        """PEM SubjectPublicKeyInfo (what `keys generate` writes)."""
        assert self.public is not None
        return self.public.public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo
                                        ).decode()

    def end_ms(self) -> int | None:
        """End of acceptance for a key not compromised: the earlier of expiry and
        retirement."""
        ends = [t for t in (self.valid_until_ms,
                            self.revoked_at_ms if self.revocation_reason != "compromised"
                            else None) if t is not None]
        return min(ends) if ends else None

    def to_json(self) -> dict[str, Any]:
        """Readable state (``keys registry list --json``); not the signed form."""
        return {
            "gateway_id": self.gateway_id, "key_id": self.key_id, "alg": self.alg,
            "public_key": self.public_key_raw.hex(), "sites": list(self.sites),
            "instruments": None if self.instruments is None else list(self.instruments),
            "valid_from": to_rfc3339(self.valid_from_ms / 1000),
            "valid_until": None if self.valid_until_ms is None
            else to_rfc3339(self.valid_until_ms / 1000),
            "backfill_s": self.backfill_s,
            "revoked_at": None if self.revoked_at_ms is None
            else to_rfc3339(self.revoked_at_ms / 1000),
            "revocation_reason": self.revocation_reason,
        }

    def permits_instrument(self, name: str) -> bool:
        """Bound instruments cover themselves and their dotted sub-streams ("logger"
        covers "logger.minute"); the gateway's own events are always permitted."""
        if self.instruments is None or name == GATEWAY_INSTRUMENT:
            return True
        if name in self.instruments:
            return True
        head = name.split(".", 1)[0]
        return head != name and head in self.instruments


def _alg_of(pub: PublicKey) -> str:
    return "ed25519" if isinstance(pub, ed25519.Ed25519PublicKey) else "p256"


def _load_raw_public(alg: str, raw: bytes) -> PublicKey:
    if alg == "ed25519":
        if len(raw) != 32:
            raise ValueError("an Ed25519 public key is 32 bytes")
        return ed25519.Ed25519PublicKey.from_public_bytes(raw)
    if len(raw) != 65 or raw[0] != 4:
        raise ValueError("a P-256 public key is the 65-byte uncompressed point 04||X||Y")
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)


# --------------------------------------------------------------------------- the registry

_ADD_FIELDS = {"n", "op", "time_ms", "prev", "gateway_id", "key_id", "alg", "public_key",
               "sites", "instruments", "valid_from_ms", "valid_until_ms", "backfill_s"}
_REVOKE_FIELDS = {"n", "op", "time_ms", "prev", "key_id", "reason", "revoked_at_ms"}
_DOC_FIELDS = {"format", "authority", "serial", "issued_ms", "changes", "head", "signature"}


def _int(v: Any, where: str, lo: int = 0, hi: int = MAX_INT) -> int:
    if type(v) is not int:
        raise RegistryError(f"{where} must be an integer, not {json.dumps(v)}")
    if not lo <= v <= hi:
        raise RegistryError(f"{where} = {v} outside {lo}..{hi}")
    return v


def _names(v: Any, where: str, allow_null: bool) -> tuple[str, ...] | None:
    if v is None and allow_null:
        return None
    if type(v) is not list or not v:
        raise RegistryError(f"{where} must be a non-empty array of names"
                            + (" or null" if allow_null else ""))
    for x in v:
        if type(x) is not str or NAME_RE.match(x) is None:
            raise RegistryError(f"{where}: {json.dumps(x)} is not a valid name (1-64 of "
                                "A-Z a-z 0-9 . _ -, starting with a letter or digit)")
    if list(v) != sorted(set(v)):
        raise RegistryError(f"{where} must be sorted and without duplicates")
    return tuple(v)


class KeyRegistry:
    """The registry's state, and the change log it is derived from.

    Build one by applying changes (:meth:`add`, :meth:`revoke`, or loading a signed
    document); :meth:`sign` / :meth:`save` produce the next version (serial + 1).
    """

    def __init__(self) -> None:
        self.entries: dict[str, KeyEntry] = {}
        self.changes: list[dict[str, Any]] = []
        self.head = ZERO_HASH_HEX
        self.serial = 0
        self.issued_ms = 0
        self.authority_fingerprint: str | None = None
        self.authority_public: ed25519.Ed25519PublicKey | None = None
        #: The signed document this state was loaded from (bytes as on disk), if any.
        self.document: bytes | None = None
        #: (serial, number of changes, head) of the last signed version built from this
        #: state: what "extends" is checked against.
        self.signed_at: tuple[int, int, str] | None = None

    # -- applying changes -------------------------------------------------------------
    def _apply(self, c: dict[str, Any], where: str) -> None:
        if type(c) is not dict:
            raise RegistryError(f"{where} is not an object")
        n = len(self.changes)
        op = c.get("op")
        fields = _ADD_FIELDS if op == "add" else _REVOKE_FIELDS if op == "revoke" else None
        if fields is None:
            raise RegistryError(f"{where}: op {json.dumps(op)} is not \"add\" or \"revoke\"")
        missing = sorted(fields - set(c))
        extra = sorted(set(c) - fields)
        if missing or extra:
            raise RegistryError(f"{where} ({op}): " + "; ".join(
                ([f"missing {', '.join(missing)}"] if missing else [])
                + ([f"unknown member(s) {', '.join(extra)}"] if extra else [])))
        if _int(c["n"], f"{where}.n") != n:
            raise RegistryError(f"{where}.n = {c['n']}, expected {n} (changes are numbered "
                                "from 0 without gaps)")
        if c["prev"] != self.head:
            raise RegistryError(f"{where}.prev does not name the hash of the change before "
                                "it (the change log was edited)")
        t = _int(c["time_ms"], f"{where}.time_ms")
        if self.changes and t < self.changes[-1]["time_ms"]:
            raise RegistryError(f"{where}.time_ms is earlier than the change before it")
        kid = c["key_id"]
        if op == "add":
            self._apply_add(c, where, n)
        else:
            e = self.entries.get(kid) if type(kid) is str else None
            if e is None:
                raise RegistryError(f"{where}: revokes key {json.dumps(kid)}, which no earlier "
                                    "change added")
            reason = c["reason"]
            if reason not in REVOCATION_REASONS:
                raise RegistryError(f"{where}: reason {json.dumps(reason)} is not one of "
                                    f"{', '.join(REVOCATION_REASONS)}")
            at = _int(c["revoked_at_ms"], f"{where}.revoked_at_ms")
            if e.revocation_reason is not None and not (
                    reason == "compromised" and e.revocation_reason != "compromised"):
                raise RegistryError(f"{where}: key {kid} was already revoked "
                                    f"({e.revocation_reason}) in changes[{e.revoked_in}]; only "
                                    "a later \"compromised\" may follow")
            e.revoked_at_ms = at if e.revoked_at_ms is None else min(at, e.revoked_at_ms)
            e.revocation_reason = reason
            e.revoked_in = n
        self.changes.append(c)
        self.head = change_hash(c)

    def _apply_add(self, c: dict[str, Any], where: str, n: int) -> None:
        gw = c["gateway_id"]
        if type(gw) is not str or NAME_RE.match(gw) is None:
            raise RegistryError(f"{where}: gateway_id {json.dumps(gw)} is not a valid name")
        kid = c["key_id"]
        if type(kid) is not str:
            raise RegistryError(f"{where}: key_id is not text")
        if kid in self.entries:
            raise RegistryError(f"{where}: key {kid} was already added in "
                                f"changes[{self.entries[kid].added_in}] (a key is added once)")
        alg = c["alg"]
        if alg not in ALG_IDS:
            raise RegistryError(f"{where}: alg {json.dumps(alg)} is not one of "
                                f"{', '.join(ALG_IDS)}")
        pk = c["public_key"]
        try:
            raw = bytes.fromhex(pk) if type(pk) is str and pk == pk.lower() else b""
            pub = _load_raw_public(alg, raw)
        except ValueError as e:
            raise RegistryError(f"{where}: public_key is not a lowercase-hex {alg} public key"
                                f" ({e})") from None
        if key_id_for(pub) != kid:
            raise RegistryError(f"{where}: key_id {kid} does not match the public key "
                                f"(expected {key_id_for(pub)})")
        sites = _names(c["sites"], f"{where}.sites", allow_null=False)
        assert sites is not None
        instruments = _names(c["instruments"], f"{where}.instruments", allow_null=True)
        vf = _int(c["valid_from_ms"], f"{where}.valid_from_ms")
        vu = c["valid_until_ms"]
        if vu is not None and _int(vu, f"{where}.valid_until_ms") <= vf:
            raise RegistryError(f"{where}: valid_until_ms is not after valid_from_ms")
        bf = _int(c["backfill_s"], f"{where}.backfill_s", 1, MAX_BACKFILL_S)
        self.entries[kid] = KeyEntry(gw, kid, alg, raw, sites, instruments, vf, vu, bf, n,
                                     public=pub)

    # -- building changes -------------------------------------------------------------
    def add(
        self,
        gateway_id: str,
        public_key_pem: bytes,
        valid_from: float,
        valid_until: float | None = None,
        *,
        sites: Iterable[str],
        instruments: Iterable[str] | None = None,
        backfill_s: int = DEFAULT_BACKFILL_S,
        at: float | None = None,
    ) -> KeyEntry:
        """Append an ``add`` change (times in float seconds, stored as integer ms)."""
        try:
            pub = load_public_key(public_key_pem)
        except (ValueError, SigningError) as e:
            raise RegistryError(f"public key of {gateway_id}: {e}") from None
        alg = _alg_of(pub)
        kid = key_id_for(pub)
        c: dict[str, Any] = {
            "n": len(self.changes), "op": "add", "time_ms": self._now_ms(at),
            "prev": self.head, "gateway_id": gateway_id, "key_id": kid,
            "alg": alg, "public_key": public_key_raw(pub).hex(),
            "sites": sorted(set(sites)),
            "instruments": None if instruments is None else sorted(set(instruments)),
            "valid_from_ms": round(valid_from * 1000),
            "valid_until_ms": None if valid_until is None else round(valid_until * 1000),
            "backfill_s": int(backfill_s),
        }
        self._apply(c, f"new change {c['n']}")
        return self.entries[kid]

    def revoke(self, key_id: str, at: float, reason: str,
               recorded: float | None = None) -> KeyEntry:
        c = {"n": len(self.changes), "op": "revoke", "time_ms": self._now_ms(recorded),
             "prev": self.head, "key_id": key_id, "reason": reason,
             "revoked_at_ms": round(at * 1000)}
        self._apply(c, f"new change {c['n']}")
        return self.entries[key_id]

    def _now_ms(self, at: float | None) -> int:
        t = round((time.time() if at is None else at) * 1000)
        # Changes are recorded in order; a clock that stepped back does not break that.
        return max(t, self.changes[-1]["time_ms"]) if self.changes else t

    # -- signing and loading ------------------------------------------------------------
    def unsigned_document(self, authority_pub: ed25519.Ed25519PublicKey,
                          issued: float | None = None) -> dict[str, Any]:
        serial = self.serial + 1
        issued_ms = round((time.time() if issued is None else issued) * 1000)
        if self.changes:
            issued_ms = max(issued_ms, self.changes[-1]["time_ms"])
        return {
            "format": FORMAT,
            "authority": {"alg": "ed25519",
                          "public_key": public_key_raw(authority_pub).hex()},
            "serial": serial,
            "issued_ms": issued_ms,
            "changes": self.changes,
            "head": self.head,
        }

    def sign(self, authority: Authority, issued: float | None = None) -> bytes:
        """The next version of the document (serial + 1), signed; returns its file bytes."""
        if self.authority_fingerprint not in (None, authority.fingerprint):
            raise RegistryError("this registry was signed by authority "
                                f"{self.authority_fingerprint[:16]}, not {authority.key_id}")
        doc = self.unsigned_document(authority.public_key, issued)
        doc["signature"] = authority.sign(SIGNING_PREFIX + canonical_json(doc)).hex()
        self.serial = doc["serial"]
        self.issued_ms = doc["issued_ms"]
        self.authority_fingerprint = authority.fingerprint
        self.authority_public = authority.public_key
        self.signed_at = (self.serial, len(self.changes), self.head)
        text = json.dumps(doc, ensure_ascii=False, indent=1, sort_keys=True) + "\n"
        self.document = text.encode("utf-8")
        return self.document

    def save(self, path: str | Path, authority: Authority | None = None) -> None:
        """Sign the next version and replace ``path`` atomically (a reloading ingest never
        reads half a registry). ``authority=None`` uses :meth:`Authority.beside`."""
        p = Path(path)
        data = self.sign(authority if authority is not None else Authority.beside(p))
        write_atomic(p, data)

    @classmethod
    def from_document(cls, data: bytes, pin: AuthorityPin | str | Path,
                      where: str = "registry") -> KeyRegistry:
        """Parse and verify a signed document against the pinned authority."""
        pin = AuthorityPin.parse(pin)
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise RegistryError(f"{where}: not a JSON document: {e}") from None
        if type(doc) is not dict:
            raise RegistryError(f"{where}: not a JSON object")
        if doc.get("format") != FORMAT:
            hint = (" (an unsigned registry of an earlier release: re-create it with "
                    "`stationseal keys registry add`)") if "keys" in doc else ""
            raise RegistryError(f"{where}: format is not {FORMAT!r}{hint}")
        missing = sorted(_DOC_FIELDS - set(doc))
        extra = sorted(set(doc) - _DOC_FIELDS)
        if missing or extra:
            raise RegistryError(f"{where}: " + "; ".join(
                ([f"missing {', '.join(missing)}"] if missing else [])
                + ([f"unknown member(s) {', '.join(extra)}"] if extra else [])))
        auth = doc["authority"]
        if type(auth) is not dict or set(auth) != {"alg", "public_key"} or \
                auth.get("alg") != "ed25519" or type(auth.get("public_key")) is not str \
                or not re.fullmatch(r"[0-9a-f]{64}", auth["public_key"]):
            raise RegistryError(f"{where}: authority must be {{\"alg\": \"ed25519\", "
                                "\"public_key\": <64 lowercase hex>}")
        apub = ed25519.Ed25519PublicKey.from_public_bytes(bytes.fromhex(auth["public_key"]))
        fp = fingerprint(apub)
        if fp != pin.fingerprint:
            raise RegistryError(f"{where}: signed by authority {fp[:16]}, not by the pinned "
                                f"authority {pin.fingerprint[:16]}")
        sig = doc["signature"]
        if type(sig) is not str or not re.fullmatch(r"[0-9a-f]{128}", sig):
            raise RegistryError(f"{where}: signature must be 128 lowercase hex digits")
        body = {k: v for k, v in doc.items() if k != "signature"}
        try:
            signed = SIGNING_PREFIX + canonical_json(body)
        except RegistryError as e:
            raise RegistryError(f"{where}: {e}") from None
        try:
            apub.verify(bytes.fromhex(sig), signed)
        except InvalidSignature:
            raise RegistryError(f"{where}: the authority's signature does not verify (the "
                                "document was altered after signing)") from None
        reg = cls()
        reg.serial = _int(doc["serial"], f"{where}: serial", 1)
        reg.issued_ms = _int(doc["issued_ms"], f"{where}: issued_ms")
        if type(doc["changes"]) is not list:
            raise RegistryError(f"{where}: changes must be an array")
        for i, c in enumerate(doc["changes"]):
            reg._apply(c, f"{where}: changes[{i}]")
        if doc["head"] != reg.head:
            raise RegistryError(f"{where}: head does not match the change log")
        if reg.changes and reg.issued_ms < reg.changes[-1]["time_ms"]:
            raise RegistryError(f"{where}: issued_ms is earlier than the last change")
        reg.authority_fingerprint = fp
        reg.authority_public = apub
        reg.document = data
        reg.signed_at = (reg.serial, len(reg.changes), reg.head)
        return reg

    @classmethod
    def load(cls, path: str | Path, pin: AuthorityPin | str | Path) -> KeyRegistry:
        p = Path(path)
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            raise RegistryError(f"{p}: registry file not found") from None
        except OSError as e:
            raise RegistryError(f"{p}: cannot read the registry: {e.strerror}") from None
        return cls.from_document(data, pin, str(p))

    def hash_at(self, count: int) -> str:
        """Head of the change log after its first ``count`` changes."""
        return ZERO_HASH_HEX if count == 0 else change_hash(self.changes[count - 1])

    def extends(self, serial: int, count: int, head: str) -> str | None:
        """None if this version may replace the accepted one (serial, count, head), else
        why not."""
        if self.serial < serial:
            return f"serial {self.serial} is lower than the accepted {serial} (a rollback)"
        if self.serial == serial:
            if (len(self.changes), self.head) == (count, head):
                return None
            return f"serial {serial} was already accepted with other content"
        if len(self.changes) < count or self.hash_at(count) != head:
            return (f"serial {self.serial} does not extend the accepted serial {serial}: its "
                    f"first {count} change(s) differ (changes may only be appended)")
        return None

    # -- verification -----------------------------------------------------------------
    def key_for(self, gateway_id: str, key_id: str) -> KeyEntry:
        """The entry for a frame's header, or KeyLookupError (unknown_key,
        gateway_mismatch). Checked before the signature."""
        e = self.entries.get(key_id)
        if e is None:
            raise KeyLookupError("unknown_key", f"key {key_id} is not in the registry")
        if e.gateway_id != gateway_id:
            raise KeyLookupError("gateway_mismatch",
                                 f"key {key_id} belongs to {e.gateway_id}, not {gateway_id}")
        return e

    def check_validity(self, e: KeyEntry, created_ms: int,
                       received_ms: int | None = None) -> None:
        """KeyLookupError (revoked_key, key_not_yet_valid, key_expired) unless the key
        was valid both when the frame says it was created and, if known, when the central
        side first received it."""
        times = [("created", created_ms)]
        if received_ms is not None:
            times.append(("first received", received_ms))
        if e.revocation_reason == "compromised":
            raise KeyLookupError("revoked_key", f"key {e.key_id} revoked as compromised "
                                 f"(at {_t(e.revoked_at_ms)}): no frame under it is valid")
        if e.revoked_at_ms is not None:
            for what, t in times:
                if t >= e.revoked_at_ms:
                    raise KeyLookupError(
                        "revoked_key", f"frame {what} {_t(t)}, key {e.key_id} revoked "
                        f"({e.revocation_reason}) at {_t(e.revoked_at_ms)}")
        for what, t in times:
            if t < e.valid_from_ms:
                raise KeyLookupError("key_not_yet_valid", f"frame {what} {_t(t)} before key "
                                     f"valid_from {_t(e.valid_from_ms)}")
        if e.valid_until_ms is not None:
            # Expiry is set in advance: a frame sealed before it may still be in the
            # gateway's outbox, so it may arrive up to the backfill horizon later.
            # (Retirement is dated by the authority once the outbox has drained: no such
            # allowance above.)
            if created_ms >= e.valid_until_ms:
                raise KeyLookupError("key_expired", f"frame created {_t(created_ms)} at or "
                                     f"after key valid_until {_t(e.valid_until_ms)}")
            late = e.valid_until_ms + e.backfill_s * 1000
            if received_ms is not None and received_ms >= late:
                raise KeyLookupError("key_expired", f"frame first received {_t(received_ms)},"
                                     f" more than the backfill horizon ({e.backfill_s} s) "
                                     f"after key valid_until {_t(e.valid_until_ms)}")

    def check_binding(self, e: KeyEntry, f: Frame) -> None:
        """KeyLookupError (site_mismatch, instrument_mismatch) unless the key may speak for
        the frame's site and every instrument it names."""
        if f.site not in e.sites:
            raise KeyLookupError("site_mismatch", f"key {e.key_id} of {e.gateway_id} is bound "
                                 f"to site(s) {', '.join(e.sites)}, not {f.site}")
        if e.instruments is None:
            return
        names = {c[0] for c in f.channels} if f.channels or f.rows else \
            {r.instrument for r in f.readings}
        names.update(ev.instrument for ev in f.events)
        bad = sorted(n for n in names if not e.permits_instrument(n))
        if bad:
            raise KeyLookupError("instrument_mismatch", f"key {e.key_id} of {e.gateway_id} "
                                 f"does not speak for instrument(s) {', '.join(bad)}")

    def lookup(self, gateway_id: str, key_id: str, created: float,
               received: float | None = None) -> tuple[KeyEntry, PublicKey]:
        """Header and time checks together (for callers outside frame verification)."""
        e = self.key_for(gateway_id, key_id)
        self.check_validity(e, round(created * 1000),
                            None if received is None else round(received * 1000))
        assert e.public is not None
        return e, e.public


def _t(ms: int | None) -> str:
    return "-" if ms is None else to_rfc3339(ms / 1000)


def load_signed(path: str | Path, authority: AuthorityPin | str | Path) -> KeyRegistry:
    """Load and verify a registry document: the importable entry point for other tools
    (evidence packages, the offline verifier)."""
    return KeyRegistry.load(path, authority)


def write_atomic(p: Path, data: bytes, mode: int = 0o644) -> None:
    fd, tmp = tempfile.mkstemp(dir=p.parent if str(p.parent) else ".", prefix=p.name,
                               suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- anti-rollback


class AcceptedRegistry:
    """The last registry version a service accepted, kept in its state directory, so that
    a restart neither accepts an older version nor starts without keys when the
    configured file is bad. Several worker processes share the file: updates are made
    under an exclusive lock and only ever move forward."""

    def __init__(self, state_dir: Path):
        self.path = state_dir / "registry-accepted.json"
        self.lock_path = state_dir / "registry-accepted.lock"

    def load(self, pin: AuthorityPin) -> KeyRegistry | None:
        if not self.path.exists():
            return None
        return KeyRegistry.load(self.path, pin)

    def accept(self, reg: KeyRegistry, pin: AuthorityPin) -> str | None:
        """Record ``reg`` as accepted if it extends what is recorded; None on success,
        else why it was refused."""
        assert reg.document is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a+") as lk:
            fcntl.flock(lk, fcntl.LOCK_EX)
            try:
                prev = self.load(pin)
            except RegistryError:
                prev = None  # a damaged copy is replaced by a verified one
            if prev is not None:
                why = reg.extends(prev.serial, len(prev.changes), prev.head)
                if why is not None:
                    return why
                if prev.serial == reg.serial:
                    return None
            write_atomic(self.path, reg.document, 0o600)
        return None


def public_key_pem(pub: PublicKey) -> bytes:
    return pub.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


__all__ = [
    "DEFAULT_BACKFILL_S", "FORMAT", "REVOCATION_REASONS", "AcceptedRegistry", "Authority",
    "AuthorityPin", "KeyEntry", "KeyLookupError", "KeyRegistry", "RegistryError",
    "authority_pub_path", "canonical_json", "change_hash", "fingerprint", "load_signed",
]
