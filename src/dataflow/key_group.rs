//! Key groups: how keyed state is spread over an operator's instances, and how it is spread
//! again when a restart runs another number of them (rescaling).
//!
//! A key (the values of a row's key columns, in order) hashes with fixed seeds to one of
//! `KEY_GROUPS` key groups, the unit keyed state moves in (Flink's "max parallelism"). With
//! `n` instances, instance `i` owns the contiguous range of groups `[i·G/n, (i+1)·G/n)`, so a
//! key belongs to the same instance in every run and every process with the same `n`. The
//! keyed shuffle (`runtime::route`) sends each row to its key's owner; a restore into another
//! count hands every new instance the snapshots of all former instances (`Rescale`), and the
//! operator keeps the keys whose group it owns now. State not tied to a key (events buffered
//! by an unkeyed operator, counters) goes whole to one new instance (`Rescale::takes`).

use std::hash::{BuildHasher, Hash, Hasher};

use crate::state::StateImage;
use crate::types::Value;

/// Key groups in all: the most instances a keyed operator can have (the pipeline's
/// `parallelism` bound is below it).
pub const KEY_GROUPS: u32 = 4096;

/// The hasher for keys: fixed seeds, so a key maps to the same group in every run and every
/// process.
pub fn key_hasher() -> ahash::RandomState {
    ahash::RandomState::with_seeds(
        0x5157_4152_4544_5348,
        0x6b65_7965_645f_7368,
        0x7566_666c_655f_7631,
        0x7761_7465_7273_6864,
    )
}

/// The key group of a key given as values in key order.
#[inline]
pub fn key_group<'a>(hasher: &ahash::RandomState, key: impl IntoIterator<Item = &'a Value>) -> u32 {
    let mut state = hasher.build_hasher();
    for v in key {
        v.hash(&mut state);
    }
    ((state.finish() as u128 * KEY_GROUPS as u128) >> 64) as u32
}

/// The instance (of `n`) that owns key group `group`.
#[inline]
pub fn owner_of_group(group: u32, n: usize) -> usize {
    (group as usize * n) / KEY_GROUPS as usize
}

/// The instance (of `n`) that owns the key held in `cols` of `row`.
#[inline]
pub fn owner_of_row(hasher: &ahash::RandomState, row: &[Value], cols: &[usize], n: usize) -> usize {
    owner_of_group(key_group(hasher, cols.iter().map(|&c| &row[c])), n)
}

/// What a new instance restores from when the checkpoint was taken with another number of
/// instances of its operator: every former instance's snapshot, in instance order.
pub struct Rescale<'a> {
    /// This instance.
    pub instance: usize,
    /// Instances of the operator in this run.
    pub parallelism: usize,
    /// The former instances' snapshots; `snapshots[j]` is instance `j`'s.
    pub snapshots: Vec<&'a StateImage>,
    hasher: ahash::RandomState,
}

impl<'a> Rescale<'a> {
    pub fn new(instance: usize, parallelism: usize, snapshots: Vec<&'a StateImage>) -> Rescale<'a> {
        Rescale {
            instance,
            parallelism,
            snapshots,
            hasher: key_hasher(),
        }
    }

    /// Whether this instance owns the key (values in key order) now.
    pub fn owns_key<'v>(&self, key: impl IntoIterator<Item = &'v Value>) -> bool {
        owner_of_group(key_group(&self.hasher, key), self.parallelism) == self.instance
    }

    /// Whether this instance owns the key held in `cols` of `row` now.
    pub fn owns_row(&self, row: &[Value], cols: &[usize]) -> bool {
        owner_of_row(&self.hasher, row, cols, self.parallelism) == self.instance
    }

    /// Whether the state of former instance `former` that is not tied to a key (buffered
    /// events of an unkeyed operator, counters) comes to this instance: each former
    /// instance's goes to exactly one new one.
    pub fn takes(&self, former: usize) -> bool {
        former % self.parallelism.max(1) == self.instance
    }

    /// The former instances whose unkeyed state this instance takes, with their snapshots.
    pub fn taken(&self) -> impl Iterator<Item = (usize, &'a StateImage)> + '_ {
        self.snapshots
            .iter()
            .enumerate()
            .filter(|(j, _)| self.takes(*j))
            .map(|(j, s)| (j, *s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_group_has_one_owner_and_ranges_are_contiguous() {
        for n in 1..=16 {
            let mut last = 0;
            for g in 0..KEY_GROUPS {
                let o = owner_of_group(g, n);
                assert!(o < n);
                assert!(o == last || o == last + 1, "n={n} g={g}");
                last = o;
            }
            assert_eq!(last, n - 1);
        }
    }

    #[test]
    fn a_key_is_owned_by_exactly_one_instance_of_any_count() {
        let h = key_hasher();
        for k in 0..2000i64 {
            let row = [
                Value::Int(k),
                Value::Str(compact_str::format_compact!("k{k}")),
            ];
            for n in 1..=5 {
                let owners: Vec<usize> = (0..n)
                    .filter(|&i| Rescale::new(i, n, Vec::new()).owns_row(&row, &[0, 1]))
                    .collect();
                assert_eq!(owners, vec![owner_of_row(&h, &row, &[0, 1], n)]);
            }
        }
    }

    #[test]
    fn keys_spread_over_instances() {
        let h = key_hasher();
        let mut counts = [0usize; 4];
        for k in 0..40_000i64 {
            counts[owner_of_row(&h, &[Value::Int(k)], &[0], 4)] += 1;
        }
        for c in counts {
            assert!((8_000..12_000).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn unkeyed_state_of_each_former_instance_goes_to_one_new_instance() {
        for m in 1..=4 {
            for n in 1..=4 {
                for j in 0..m {
                    let takers = (0..n)
                        .filter(|&i| Rescale::new(i, n, Vec::new()).takes(j))
                        .count();
                    assert_eq!(takers, 1);
                }
            }
        }
    }
}
