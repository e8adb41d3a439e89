//! Group keys of the window operator: stored as `GroupKey`, looked up by a borrowed view of
//! a row's key columns (`RowKey`), so that a row whose group exists allocates nothing; and
//! the order of keys in output (`cmp_keys`).

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::hash::{Hash, Hasher};

use serde::{Deserialize, Serialize};

use crate::types::Value;

/// The values of the key fields of a group, in key order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub(super) struct GroupKey(pub(super) Box<[Value]>);

/// A key that can be hashed and compared without being built: a stored `GroupKey` or a view of
/// a row. Both hash their values in order, so a map of `GroupKey` can be probed with a view.
pub(super) trait KeyLike {
    fn width(&self) -> usize;
    fn value(&self, i: usize) -> &Value;
}

/// The key columns of a row, borrowed.
pub(super) struct RowKey<'a> {
    pub(super) row: &'a [Value],
    pub(super) columns: &'a [usize],
}

impl KeyLike for RowKey<'_> {
    fn width(&self) -> usize {
        self.columns.len()
    }

    fn value(&self, i: usize) -> &Value {
        &self.row[self.columns[i]]
    }
}

impl KeyLike for GroupKey {
    fn width(&self) -> usize {
        self.0.len()
    }

    fn value(&self, i: usize) -> &Value {
        &self.0[i]
    }
}

impl Hash for dyn KeyLike + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        for i in 0..self.width() {
            self.value(i).hash(state);
        }
    }
}

impl PartialEq for dyn KeyLike + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.width() == other.width() && (0..self.width()).all(|i| self.value(i) == other.value(i))
    }
}

impl Eq for dyn KeyLike + '_ {}

impl Hash for GroupKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (self as &dyn KeyLike).hash(state);
    }
}

impl<'a> Borrow<dyn KeyLike + 'a> for GroupKey {
    fn borrow(&self) -> &(dyn KeyLike + 'a) {
        self
    }
}

impl GroupKey {
    pub(super) fn of(key: &RowKey<'_>) -> GroupKey {
        GroupKey(key.columns.iter().map(|&c| key.row[c].clone()).collect())
    }
}

/// Orders keys by their values in turn (`Value::total_cmp`).
pub(super) fn cmp_keys(a: &[Value], b: &[Value]) -> Ordering {
    a.iter()
        .zip(b)
        .map(|(x, y)| x.total_cmp(y))
        .find(|o| o.is_ne())
        .unwrap_or_else(|| a.len().cmp(&b.len()))
}
