"""Gateway keys and the central key registry.

`keys generate` runs where the key will live (on the gateway, or in the provisioning
station) so the private key never travels; only the public key goes to the registry.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from stationseal.keys import REVOCATION_REASONS, KeyRegistry, RegistryError, generate_keypair
from stationseal.records import from_rfc3339, to_rfc3339


def _time(s: str | None, what: str) -> float | None:
    from stationseal.cli import UsageError

    if s is None:
        return None
    if s == "now":
        return time.time()
    try:
        return from_rfc3339(s)
    except ValueError as e:
        raise UsageError(f"{what} {s!r}: {e} (use RFC 3339, e.g. 2026-01-01T00:00:00Z)") from None


def _load_or_new(path: Path) -> KeyRegistry:
    return KeyRegistry.load(path) if path.exists() else KeyRegistry()


def cmd_generate(args: argparse.Namespace) -> int:
    from stationseal.cli import UsageError

    try:
        kf = generate_keypair(args.gateway_id, args.out, args.alg, overwrite=args.force)
    except RegistryError as e:
        raise UsageError(str(e)) from None
    print(json.dumps({"gateway_id": kf.gateway_id, "key_id": kf.key_id, "alg": kf.alg,
                      "private_key": str(kf.private_key), "public_key": str(kf.public_key)}))
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    from stationseal.cli import UsageError

    reg_path = Path(args.registry)
    try:
        reg = _load_or_new(reg_path)
        pem = Path(args.public_key).read_bytes()
        valid_from = _time(args.valid_from, "--valid-from")
        e = reg.add(
            args.gateway_id,
            pem,
            valid_from if valid_from is not None else time.time(),
            _time(args.valid_until, "--valid-until"),
        )
        reg.save(reg_path)
    except (RegistryError, OSError, ValueError) as ex:
        raise UsageError(f"{args.public_key}: {ex}") from None
    print(f"added key {e.key_id} ({e.alg}) for {e.gateway_id} to {reg_path}")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    from stationseal.cli import UsageError

    reg_path = Path(args.registry)
    try:
        reg = KeyRegistry.load(reg_path)
        at = _time(args.at or "now", "--at")
        assert at is not None
        e = reg.revoke(args.key_id, at, args.reason)
        reg.save(reg_path)
    except RegistryError as ex:
        raise UsageError(str(ex)) from None
    print(f"revoked key {e.key_id} of {e.gateway_id} at {to_rfc3339(at)} ({args.reason})")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from stationseal.cli import UsageError

    try:
        reg = KeyRegistry.load(args.registry)
    except RegistryError as ex:
        raise UsageError(str(ex)) from None
    if args.json:
        json.dump([e.to_json() for e in reg.entries.values()], sys.stdout, indent=2)
        print()
        return 0
    print(f"{'gateway':<20} {'key id':<17} {'alg':<8} {'valid from':<25} state")
    for e in reg.entries.values():
        state = "active"
        if e.revoked_at is not None:
            state = f"revoked {to_rfc3339(e.revoked_at)} ({e.revocation_reason})"
        elif e.valid_until is not None:
            state = f"valid until {to_rfc3339(e.valid_until)}"
        print(f"{e.gateway_id:<20} {e.key_id:<17} {e.alg:<8} {to_rfc3339(e.valid_from):<25} "
              f"{state}")
    return 0


def register(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    g = sub.add_parser("generate", help="generate a gateway key pair (private key 0600)")
    g.add_argument("--gateway-id", required=True)
    g.add_argument("--out", required=True, help="directory for <id>.key and <id>.pub.pem")
    g.add_argument("--alg", choices=("ed25519", "p256"), default="ed25519")
    g.add_argument("--force", action="store_true", help="replace an existing key pair")
    g.set_defaults(func=cmd_generate)

    r = sub.add_parser("registry", help="manage the central key registry")
    rsub = r.add_subparsers(dest="registry_command", metavar="ACTION", required=True)
    a = rsub.add_parser("add", help="register a gateway public key")
    a.add_argument("--registry", required=True)
    a.add_argument("--gateway-id", required=True)
    a.add_argument("--public-key", required=True, help="PEM file written by keys generate")
    a.add_argument("--valid-from", help="RFC 3339 or 'now' (default now)")
    a.add_argument("--valid-until", help="RFC 3339 (default: no end)")
    a.set_defaults(func=cmd_add)
    v = rsub.add_parser("revoke", help="revoke a key")
    v.add_argument("--registry", required=True)
    v.add_argument("key_id")
    v.add_argument("--reason", choices=REVOCATION_REASONS, required=True,
                   help="compromised rejects every frame under the key; the others only "
                        "frames created after --at")
    v.add_argument("--at", help="RFC 3339 or 'now' (default now)")
    v.set_defaults(func=cmd_revoke)
    ls = rsub.add_parser("list", help="list registered keys")
    ls.add_argument("--registry", required=True)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)
