"""Gateway keys, the registry authority and the signed key registry.

`keys generate` runs where the key will live (on the gateway, or in the provisioning
station) so the private key never travels; only the public key goes to the registry.
`keys authority generate` runs where the registry is maintained (an offline machine is
best): the authority key signs every version of the registry, and everyone who verifies
frames pins its fingerprint. `keys registry add/revoke` append one change and sign the
next version (docs/wire-format.md §9).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from stationseal.keys import generate_keypair
from stationseal.records import from_rfc3339, to_rfc3339
from stationseal.registry import (
    DEFAULT_BACKFILL_S,
    MAX_BACKFILL_S,
    REVOCATION_REASONS,
    Authority,
    AuthorityPin,
    KeyRegistry,
    RegistryError,
    write_atomic,
)


def _usage(msg: str) -> Exception:
    from stationseal.cli import UsageError

    return UsageError(msg)


def _time(s: str | None, what: str) -> float | None:
    if s is None:
        return None
    if s == "now":
        return time.time()
    try:
        return from_rfc3339(s)
    except ValueError as e:
        raise _usage(f"{what} {s!r}: {e} (use RFC 3339, e.g. 2026-01-01T00:00:00Z)") from None


def _duration(s: str) -> int:
    m = re.fullmatch(r"(\d+)([smhd]?)", s.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"{s!r}: use seconds or a number with s, m, h or d")
    n = int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    if not 1 <= n <= MAX_BACKFILL_S:
        raise argparse.ArgumentTypeError(f"{s!r}: between 1 s and {MAX_BACKFILL_S // 86400} d")
    return n


def cmd_generate(args: argparse.Namespace) -> int:
    try:
        kf = generate_keypair(args.gateway_id, args.out, args.alg, overwrite=args.force)
    except RegistryError as e:
        raise _usage(str(e)) from None
    print(json.dumps({"gateway_id": kf.gateway_id, "key_id": kf.key_id, "alg": kf.alg,
                      "private_key": str(kf.private_key), "public_key": str(kf.public_key)}))
    return 0


# --------------------------------------------------------------------------- authority


def cmd_authority_generate(args: argparse.Namespace) -> int:
    out = Path(args.out)
    kp, pp = out / f"{args.name}.key", out / f"{args.name}.pub.pem"
    if kp.exists() or pp.exists():
        raise _usage(f"{kp} already exists; refusing to overwrite a registry authority key")
    auth = Authority.generate(kp, pp)
    print(json.dumps({"private_key": str(kp), "public_key": str(pp),
                      "fingerprint": f"sha256:{auth.fingerprint}", "key_id": auth.key_id}))
    return 0


def cmd_authority_show(args: argparse.Namespace) -> int:
    try:
        if args.key.endswith(".key"):
            auth = Authority.load(args.key)
            fp = auth.fingerprint
        else:
            pin = AuthorityPin.parse(args.key)
            fp = pin.fingerprint
    except RegistryError as e:
        raise _usage(str(e)) from None
    print(f"sha256:{fp}")
    return 0


# --------------------------------------------------------------------------- registry


def _authority(args: argparse.Namespace) -> Authority:
    try:
        return Authority.load(args.authority_key)
    except RegistryError as e:
        raise _usage(str(e)) from None


def _load_for_change(path: Path, auth: Authority) -> KeyRegistry:
    """The current version, verified against the authority about to sign the next."""
    if not path.exists():
        return KeyRegistry()
    return KeyRegistry.load(path, AuthorityPin.parse(auth.public_key))


def _commit(reg: KeyRegistry, path: Path, auth: Authority) -> None:
    write_atomic(path, reg.sign(auth))


def cmd_init(args: argparse.Namespace) -> int:
    path = Path(args.registry)
    if path.exists():
        raise _usage(f"{path} exists; `keys registry add` appends to it")
    auth = _authority(args)
    reg = KeyRegistry()
    _commit(reg, path, auth)
    print(f"created {path}: serial {reg.serial}, authority sha256:{auth.fingerprint}")
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    path = Path(args.registry)
    auth = _authority(args)
    try:
        reg = _load_for_change(path, auth)
        pem = Path(args.public_key).read_bytes()
        valid_from = _time(args.valid_from, "--valid-from")
        e = reg.add(
            args.gateway_id, pem, valid_from if valid_from is not None else time.time(),
            _time(args.valid_until, "--valid-until"), sites=args.site,
            instruments=args.instrument or None, backfill_s=args.backfill,
        )
        _commit(reg, path, auth)
    except (RegistryError, OSError) as ex:
        raise _usage(f"{args.public_key}: {ex}") from None
    print(f"added key {e.key_id} ({e.alg}) for {e.gateway_id}, sites {','.join(e.sites)}"
          + (f", instruments {','.join(e.instruments)}" if e.instruments else "")
          + f" to {path} (serial {reg.serial})")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    path = Path(args.registry)
    auth = _authority(args)
    try:
        reg = _load_for_change(path, auth)
        at = _time(args.at or "now", "--at")
        assert at is not None
        e = reg.revoke(args.key_id, at, args.reason)
        _commit(reg, path, auth)
    except RegistryError as ex:
        raise _usage(str(ex)) from None
    print(f"revoked key {e.key_id} of {e.gateway_id} at {to_rfc3339(at)} ({args.reason}); "
          f"{path} serial {reg.serial}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    try:
        reg = KeyRegistry.load(args.registry, AuthorityPin.parse(args.authority))
    except RegistryError as ex:
        raise _usage(str(ex)) from None
    if args.json:
        json.dump({"serial": reg.serial, "issued": to_rfc3339(reg.issued_ms / 1000),
                   "authority": f"sha256:{reg.authority_fingerprint}",
                   "changes": len(reg.changes), "head": reg.head,
                   "keys": [e.to_json() for e in reg.entries.values()]}, sys.stdout, indent=2)
        print()
        return 0
    print(f"serial {reg.serial}, issued {to_rfc3339(reg.issued_ms / 1000)}, {len(reg.changes)} "
          f"change(s), authority sha256:{reg.authority_fingerprint}")
    print(f"{'gateway':<20} {'key id':<17} {'alg':<8} {'sites':<24} {'valid from':<25} state")
    for e in reg.entries.values():
        state = "active"
        if e.revoked_at_ms is not None:
            state = f"revoked {to_rfc3339(e.revoked_at_ms / 1000)} ({e.revocation_reason})"
        elif e.valid_until_ms is not None:
            state = f"valid until {to_rfc3339(e.valid_until_ms / 1000)}"
        print(f"{e.gateway_id:<20} {e.key_id:<17} {e.alg:<8} {','.join(e.sites):<24} "
              f"{to_rfc3339(e.valid_from_ms / 1000):<25} {state}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Verify a version and, with --previous, that it extends an accepted one."""
    try:
        pin = AuthorityPin.parse(args.authority)
        reg = KeyRegistry.load(args.registry, pin)
        if args.previous:
            prev = KeyRegistry.load(args.previous, pin)
            why = reg.extends(prev.serial, len(prev.changes), prev.head)
            if why is not None:
                raise RegistryError(f"{args.registry}: {why}")
    except RegistryError as ex:
        print(f"stationseal keys registry check: {ex}", file=sys.stderr)
        return 1
    print(f"{args.registry}: OK, serial {reg.serial}, {len(reg.entries)} key(s), authority "
          f"sha256:{reg.authority_fingerprint}")
    return 0


def register(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    g = sub.add_parser("generate", help="generate a gateway key pair (private key 0600)")
    g.add_argument("--gateway-id", required=True)
    g.add_argument("--out", required=True, help="directory for <id>.key and <id>.pub.pem")
    g.add_argument("--alg", choices=("ed25519", "p256"), default="ed25519")
    g.add_argument("--force", action="store_true", help="replace an existing key pair")
    g.set_defaults(func=cmd_generate)

    au = sub.add_parser("authority", help="the registry authority's key")
    asub = au.add_subparsers(dest="authority_command", metavar="ACTION", required=True)
    ag = asub.add_parser("generate", help="generate the authority key (Ed25519, 0600)")
    ag.add_argument("--out", required=True, help="directory for NAME.key and NAME.pub.pem")
    ag.add_argument("--name", default="registry-authority")
    ag.set_defaults(func=cmd_authority_generate)
    ash = asub.add_parser("fingerprint", help="print the sha256 fingerprint of an authority "
                          "key (private .key or public .pem)")
    ash.add_argument("key")
    ash.set_defaults(func=cmd_authority_show)

    r = sub.add_parser("registry", help="manage the signed key registry")
    rsub = r.add_subparsers(dest="registry_command", metavar="ACTION", required=True)

    def signing(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--registry", required=True)
        sp.add_argument("--authority-key", required=True,
                        help="the registry authority's private key (signs the new version)")

    i = rsub.add_parser("init", help="create an empty registry (serial 1)")
    signing(i)
    i.set_defaults(func=cmd_init)
    a = rsub.add_parser("add", help="register a gateway public key, bound to its site(s)")
    signing(a)
    a.add_argument("--gateway-id", required=True)
    a.add_argument("--public-key", required=True, help="PEM file written by keys generate")
    a.add_argument("--site", action="append", required=True,
                   help="a site the key may report for (repeat for several)")
    a.add_argument("--instrument", action="append",
                   help="an instrument id the key may speak for (repeat; default: any)")
    a.add_argument("--valid-from", help="RFC 3339 or 'now' (default now)")
    a.add_argument("--valid-until", help="RFC 3339 (default: no end)")
    a.add_argument("--backfill", type=_duration, default=DEFAULT_BACKFILL_S,
                   help="the gateway's backfill horizon: the oldest frame it can still "
                        "deliver, e.g. 30d (its outbox max_age_s); default 30d")
    a.set_defaults(func=cmd_add)
    v = rsub.add_parser("revoke", help="revoke a key")
    signing(v)
    v.add_argument("key_id")
    v.add_argument("--reason", choices=REVOCATION_REASONS, required=True,
                   help="compromised rejects every frame under the key; the others only "
                        "frames created or first received at or after --at")
    v.add_argument("--at", help="RFC 3339 or 'now' (default now)")
    v.set_defaults(func=cmd_revoke)

    def pinned(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--registry", required=True)
        sp.add_argument("--authority", required=True,
                        help="authority public key (PEM) or sha256 fingerprint")

    ls = rsub.add_parser("list", help="list registered keys")
    pinned(ls)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)
    ck = rsub.add_parser("check", help="verify a registry version (and that it extends "
                         "--previous)")
    pinned(ck)
    ck.add_argument("--previous", help="an accepted earlier version")
    ck.set_defaults(func=cmd_check)
