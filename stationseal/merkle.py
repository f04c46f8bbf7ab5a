"""Merkle tree hashing and inclusion proofs, as in Certificate Transparency (RFC 9162 §2.1).

The central receipt log publishes a signed checkpoint over the frames it received since
the previous checkpoint; an inclusion proof shows that one frame's receipt is in it. The
construction is exactly RFC 6962 / RFC 9162 so that an independent verifier can reuse any
CT library: leaves and interior nodes are hashed with distinct one-byte prefixes (0x00 and
0x01), which prevents a leaf from being passed off as a subtree (second-preimage attack).
The split point of a tree of n leaves is the largest power of two smaller than n.
docs/evidence.md gives the byte layout and test vectors.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()


class ProofError(ValueError):
    """An inclusion proof that is malformed (wrong length, index outside the tree)."""


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """MTH over already hashed leaves. Bottom-up, pairing left to right and carrying an odd
    last node up unchanged: this gives the same root as RFC 9162's recursive definition
    (the left subtree is always the largest power of two) in O(n) without recursion."""
    if not hashes:
        return EMPTY_ROOT
    level = list(hashes)
    while len(level) > 1:
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def _split(n: int) -> int:
    """Largest power of two strictly smaller than n (n >= 2)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def inclusion_path(hashes: Sequence[bytes], index: int) -> list[bytes]:
    """PATH(m, D[n]) of RFC 9162 §2.1.3.1 for leaf ``index``: sibling hashes, leaf first."""
    n = len(hashes)
    if not 0 <= index < n:
        raise ProofError(f"leaf index {index} outside a tree of {n} leaves")
    path: list[bytes] = []
    lo, hi, m = 0, n, index
    # Walk down from the root, remembering the sibling subtrees; reversed at the end.
    while hi - lo > 1:
        k = _split(hi - lo)
        if m < k:
            path.append(root_from_leaf_hashes(hashes[lo + k:hi]))
            hi = lo + k
        else:
            path.append(root_from_leaf_hashes(hashes[lo:lo + k]))
            lo, m = lo + k, m - k
    path.reverse()
    return path


def root_from_inclusion(index: int, size: int, leaf: bytes, path: Sequence[bytes]) -> bytes:
    """The root an inclusion proof leads to (RFC 9162 §2.1.3.2); compare with the signed
    root. Raises :class:`ProofError` if the proof has the wrong length for (index, size)."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} outside a tree of {size} leaves")
    fn, sn = index, size - 1
    r = leaf
    for p in path:
        if sn == 0:
            raise ProofError("inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("inclusion proof is shorter than the tree is deep")
    return r
