//! Merkle tree hashing, proofs and their verification as RFC 9162 (Certificate
//! Transparency 2.0, §2.1) defines them: SHA-256, leaves hashed as `H(0x00 ‖ data)`,
//! interior nodes as `H(0x01 ‖ left ‖ right)`, a tree of `n` leaves split at the largest
//! power of two below `n`. Proofs made here verify with any other implementation of the
//! RFC, and the other way round.

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

/// The root of the empty tree: SHA-256 of the empty string.
pub const EMPTY_ROOT: Hash = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The largest power of two strictly below `n` (`n` ≥ 2).
pub fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// Something that knows the hash of any run of leaves `[lo, hi)` of a tree (`MTH(D[lo:hi])`
/// in the RFC). Proofs are built from these.
pub trait Subtrees {
    type Error;
    fn subtree(&mut self, lo: u64, hi: u64) -> Result<Hash, Self::Error>;
}

/// A tree held as its leaf hashes in memory (tests, exports, small logs).
pub struct Leaves<'a>(pub &'a [Hash]);

impl Subtrees for Leaves<'_> {
    type Error = std::convert::Infallible;
    fn subtree(&mut self, lo: u64, hi: u64) -> Result<Hash, Self::Error> {
        Ok(range_root(self.0, lo, hi))
    }
}

/// `MTH(D[lo:hi])` computed from leaf hashes, by the RFC's recursive definition (`hi` ≤
/// `leaves.len()`; an empty or out-of-bounds range gives the empty root).
pub fn range_root(leaves: &[Hash], lo: u64, hi: u64) -> Hash {
    let (Ok(l), Ok(r)) = (usize::try_from(lo), usize::try_from(hi)) else {
        return EMPTY_ROOT;
    };
    match leaves.get(l..r) {
        Some(run) => root(run),
        None => EMPTY_ROOT,
    }
}

/// The root of a tree of these leaf hashes.
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves {
        [] => EMPTY_ROOT,
        [one] => *one,
        _ => {
            let k = usize::try_from(split(leaves.len() as u64)).unwrap_or(0);
            let (left, right) = leaves.split_at(k.min(leaves.len()));
            node_hash(&root(left), &root(right))
        }
    }
}

/// Inclusion proof (the audit path) of leaf `index` in the tree of the first `size`
/// leaves: RFC 9162 §2.1.3.1.
pub fn inclusion_proof<S: Subtrees>(
    tree: &mut S,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, S::Error> {
    let mut path = Vec::new();
    if index >= size {
        return Ok(path);
    }
    // Walk down from the whole tree, collecting siblings, then reverse (leaf first).
    let (mut lo, mut hi, mut m) = (0u64, size, index);
    while hi - lo > 1 {
        let k = split(hi - lo);
        if m < k {
            path.push(tree.subtree(lo + k, hi)?);
            hi = lo + k;
        } else {
            path.push(tree.subtree(lo, lo + k)?);
            lo += k;
            m -= k;
        }
    }
    path.reverse();
    Ok(path)
}

/// Consistency proof between the trees of the first `old` and the first `new` leaves
/// (0 < `old` < `new`): RFC 9162 §2.1.4.1. Empty for any other pair.
pub fn consistency_proof<S: Subtrees>(
    tree: &mut S,
    old: u64,
    new: u64,
) -> Result<Vec<Hash>, S::Error> {
    let mut proof = Vec::new();
    if old == 0 || old >= new {
        return Ok(proof);
    }
    // SUBPROOF(m, D[lo:hi], b), unrolled: the RFC appends after the recursive call, so
    // collect on the way down and reverse.
    let (mut lo, mut hi, mut m, mut whole) = (0u64, new, old, true);
    loop {
        let n = hi - lo;
        if m == n {
            if !whole {
                proof.push(tree.subtree(lo, hi)?);
            }
            break;
        }
        let k = split(n);
        if m <= k {
            proof.push(tree.subtree(lo + k, hi)?);
            hi = lo + k;
        } else {
            proof.push(tree.subtree(lo, lo + k)?);
            lo += k;
            m -= k;
            whole = false;
        }
    }
    proof.reverse();
    Ok(proof)
}

/// RFC 9162 §2.1.3.2: does `proof` show the leaf with hash `leaf` at `index` in the tree
/// of `size` leaves with root `root`?
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && r == *root
}

/// RFC 9162 §2.1.4.2: does `proof` show that the tree of `old` leaves with root
/// `old_root` is a prefix of the tree of `new` leaves with root `new_root`?
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> bool {
    if old > new {
        return false;
    }
    if old == new {
        return proof.is_empty() && old_root == new_root;
    }
    if old == 0 {
        // Every tree extends the empty one.
        return proof.is_empty() && *old_root == EMPTY_ROOT;
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    let (mut f, mut s) = (old - 1, new - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    fr == *old_root && sr == *new_root && s == 0
}

/// The roots of the perfect subtrees a growing tree ends in (a "compact range"): append a
/// leaf in amortised one node hash, and have the root in at most log₂ n more. Streaming
/// verification uses it, so that checking a log needs memory for 64 hashes, not the log.
#[derive(Debug, Clone, Default)]
pub struct Frontier {
    size: u64,
    /// Largest subtree first.
    stack: Vec<Hash>,
}

impl Frontier {
    pub fn push(&mut self, leaf: Hash) {
        self.push_completing(leaf, 0);
    }

    /// Adds a leaf, and returns the root of the aligned perfect subtree of `2^height`
    /// leaves the leaf completes, if it completes one: the hash [`root`] would compute
    /// from those leaves, found on the way for no extra hashing.
    pub fn push_completing(&mut self, leaf: Hash, height: u32) -> Option<Hash> {
        let mut h = leaf;
        let mut n = self.size;
        let mut completed = (height == 0).then_some(leaf);
        let mut level = 0;
        // Every trailing one bit of the old size is a subtree the new leaf completes.
        while n & 1 == 1 {
            if let Some(left) = self.stack.pop() {
                h = node_hash(&left, &h);
            }
            n >>= 1;
            level += 1;
            if level == height {
                completed = Some(h);
            }
        }
        self.stack.push(h);
        self.size += 1;
        completed
    }

    /// A frontier from the roots of the perfect subtrees a tree of `size` leaves ends in,
    /// largest first (one per set bit of `size`).
    pub fn from_parts(size: u64, stack: Vec<Hash>) -> Frontier {
        debug_assert_eq!(stack.len(), size.count_ones() as usize);
        Frontier { size, stack }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn root(&self) -> Hash {
        let mut it = self.stack.iter().rev();
        let Some(last) = it.next() else {
            return EMPTY_ROOT;
        };
        it.fold(*last, |acc, left| node_hash(left, &acc))
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "test code: a panic is a test failure"
)]
mod tests {
    use super::*;

    #[test]
    fn a_push_returns_the_root_of_the_subtree_it_completes() {
        let leaves: Vec<Hash> = (0u32..1100).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        for height in [0, 1, 3, 8] {
            let span = 1usize << height;
            let mut f = Frontier::default();
            for (i, l) in leaves.iter().enumerate() {
                let done = f.push_completing(*l, height);
                if (i + 1) % span == 0 {
                    let lo = i + 1 - span;
                    assert_eq!(
                        done,
                        Some(root(&leaves[lo..=i])),
                        "height {height}, leaf {i}"
                    );
                } else {
                    assert_eq!(done, None, "height {height}, leaf {i}");
                }
                assert_eq!(f.root(), root(&leaves[..=i]));
            }
        }
    }

    fn h(s: &str) -> Hash {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    /// The Certificate Transparency reference leaves and the root of each prefix of them
    /// (RFC 6962 test data, as published with the RFC's reference implementations).
    fn reference() -> (Vec<Hash>, Vec<Hash>) {
        let data = [
            "",
            "00",
            "10",
            "2021",
            "3031",
            "40414243",
            "5051525354555657",
            "606162636465666768696a6b6c6d6e6f",
        ];
        let roots = [
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ];
        (
            data.iter()
                .map(|d| leaf_hash(&hex::decode(d).unwrap()))
                .collect(),
            roots.iter().map(|r| h(r)).collect(),
        )
    }

    #[test]
    fn roots_and_proofs_match_the_reference_vectors() {
        let (leaves, roots) = reference();
        for n in 0..=8 {
            assert_eq!(root(&leaves[..n]), roots[n], "root of {n}");
        }
        let mut t = Leaves(&leaves);
        assert_eq!(
            inclusion_proof(&mut t, 0, 8).unwrap(),
            [
                h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
                h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
                h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
            ]
        );
        assert_eq!(
            inclusion_proof(&mut t, 5, 8).unwrap(),
            [
                h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
                h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
                h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
            ]
        );
        assert_eq!(
            consistency_proof(&mut t, 2, 8).unwrap(),
            [
                h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
                h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
            ]
        );
    }

    #[test]
    fn every_proof_verifies_and_no_altered_one_does() {
        let leaves: Vec<Hash> = (0u32..70).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let roots: Vec<Hash> = (0..=leaves.len()).map(|n| root(&leaves[..n])).collect();
        let mut t = Leaves(&leaves);
        for n in 1..=leaves.len() as u64 {
            let rn = roots[n as usize];
            for i in 0..n {
                let p = inclusion_proof(&mut t, i, n).unwrap();
                assert!(
                    verify_inclusion(&leaves[i as usize], i, n, &p, &rn),
                    "{i}/{n}"
                );
                if i + 1 < n {
                    assert!(!verify_inclusion(&leaves[i as usize], i + 1, n, &p, &rn));
                }
                if let Some(last) = p.len().checked_sub(1) {
                    let mut bad = p.clone();
                    bad[last][7] ^= 1;
                    assert!(!verify_inclusion(&leaves[i as usize], i, n, &bad, &rn));
                    assert!(!verify_inclusion(
                        &leaves[i as usize],
                        i,
                        n,
                        &p[..last],
                        &rn
                    ));
                }
                let mut longer = p.clone();
                longer.push([0xab; 32]);
                assert!(!verify_inclusion(&leaves[i as usize], i, n, &longer, &rn));
            }
            for m in 0..=n {
                let rm = roots[m as usize];
                let p = consistency_proof(&mut t, m, n).unwrap();
                assert!(verify_consistency(m, n, &rm, &rn, &p), "{m}->{n}");
                if m > 0 && m < n {
                    let mut bad = p.clone();
                    bad[0][3] ^= 0x80;
                    assert!(!verify_consistency(m, n, &rm, &rn, &bad), "{m}->{n}");
                    assert!(!verify_consistency(m, n, &rm, &rn, &p[..p.len() - 1]));
                    assert!(!verify_consistency(m, n, &roots[m as usize - 1], &rn, &p));
                    let mut longer = p.clone();
                    longer.push([0xcd; 32]);
                    assert!(!verify_consistency(m, n, &rm, &rn, &longer));
                }
            }
        }
    }

    #[test]
    fn the_frontier_agrees_with_the_recursive_definition() {
        let leaves: Vec<Hash> = (0u32..300).map(|i| leaf_hash(&i.to_le_bytes())).collect();
        let mut f = Frontier::default();
        for (n, l) in leaves.iter().enumerate() {
            f.push(*l);
            let mut t = Leaves(&leaves);
            let expected = if n == 0 {
                leaves[0]
            } else {
                let k = split(n as u64 + 1);
                node_hash(
                    &t.subtree(0, k).unwrap(),
                    &t.subtree(k, n as u64 + 1).unwrap(),
                )
            };
            assert_eq!(f.root(), expected, "size {}", n + 1);
        }
        assert_eq!(split(2), 1);
        assert_eq!(split(3), 2);
        assert_eq!(split(8), 4);
        assert_eq!(split(9), 8);
    }
}
