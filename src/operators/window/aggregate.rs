//! The window operator's aggregate functions (`AggregateFn`, `AggregateSpec`) and their
//! running state per (key, window) (`Acc`): how a row updates it, how two merge (sessions)
//! and what value it finally has. The null and overflow rules are in the operator's header.

use std::cmp::Ordering;
use std::collections::HashSet;

use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use serde::{Deserialize, Serialize};

use super::clamp_i64;
use crate::types::{DataType, Value};

type FastSet<T> = HashSet<T, ahash::RandomState>;

/// An aggregate function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AggregateFn {
    Count,
    Sum,
    Min,
    Max,
    Avg,
    CountDistinct,
}

impl AggregateFn {
    /// All function names, for error messages and `--help`.
    pub const NAMES: &'static [&'static str] =
        &["count", "sum", "min", "max", "avg", "count_distinct"];

    pub fn parse(name: &str) -> Option<AggregateFn> {
        Some(match name {
            "count" => AggregateFn::Count,
            "sum" => AggregateFn::Sum,
            "min" => AggregateFn::Min,
            "max" => AggregateFn::Max,
            "avg" => AggregateFn::Avg,
            "count_distinct" => AggregateFn::CountDistinct,
            _ => return None,
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            AggregateFn::Count => "count",
            AggregateFn::Sum => "sum",
            AggregateFn::Min => "min",
            AggregateFn::Max => "max",
            AggregateFn::Avg => "avg",
            AggregateFn::CountDistinct => "count_distinct",
        }
    }

    /// The output type for an input field of type `input` (`None`: `count` of rows).
    pub(super) fn output_type(self, input: Option<DataType>) -> DataType {
        match (self, input) {
            (AggregateFn::Count | AggregateFn::CountDistinct, _) => DataType::Int,
            (AggregateFn::Avg, _) => DataType::Float,
            (_, Some(t)) => t,
            (_, None) => DataType::Null,
        }
    }
}

/// One output aggregate: `name` is its output column.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AggregateSpec {
    pub name: String,
    pub function: AggregateFn,
    /// The input field; `None` only for `count`, which then counts rows.
    pub field: Option<String>,
}

/// How to read and aggregate one output column.
#[derive(Clone, Copy, Debug)]
pub(super) struct AggPlan {
    pub(super) function: AggregateFn,
    /// Input column; `None` for `count` of rows.
    pub(super) field: Option<usize>,
    pub(super) input: DataType,
}

/// The running state of one aggregate of one (key, window).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) enum Acc {
    /// `count`: rows, or non-null values of the field.
    Count(i64),
    /// `sum`/`avg` of an int field.
    Int {
        sum: i128,
        n: u64,
    },
    /// `sum`/`avg` of a float field.
    Float {
        sum: f64,
        n: u64,
    },
    /// `sum`/`avg` of a decimal field.
    Decimal {
        sum: Decimal,
        n: u64,
    },
    Min(Value),
    Max(Value),
    Distinct(FastSet<Value>),
}

impl AggPlan {
    fn new_acc(&self) -> Acc {
        match (self.function, self.input) {
            (AggregateFn::Count, _) => Acc::Count(0),
            (AggregateFn::Sum | AggregateFn::Avg, DataType::Float) => Acc::Float { sum: 0.0, n: 0 },
            (AggregateFn::Sum | AggregateFn::Avg, DataType::Decimal) => Acc::Decimal {
                sum: Decimal::ZERO,
                n: 0,
            },
            (AggregateFn::Sum | AggregateFn::Avg, _) => Acc::Int { sum: 0, n: 0 },
            (AggregateFn::Min, _) => Acc::Min(Value::Null),
            (AggregateFn::Max, _) => Acc::Max(Value::Null),
            (AggregateFn::CountDistinct, _) => Acc::Distinct(FastSet::default()),
        }
    }
}

pub(super) fn new_accs(plans: &[AggPlan]) -> Box<[Acc]> {
    plans.iter().map(AggPlan::new_acc).collect()
}

/// No accumulator counts this many rows; a restored one that does was not written by a run.
const MAX_COUNT: u64 = 1 << 62;

/// Checks restored accumulators: one per aggregate, each of the kind its aggregate starts
/// with, its counts within what a run reaches (so that adding rows and merging never fail).
pub(super) fn check_accs(accs: &[Acc], plans: &[AggPlan]) -> Result<(), String> {
    if accs.len() != plans.len() {
        return Err(format!(
            "{} accumulators for {} aggregates",
            accs.len(),
            plans.len()
        ));
    }
    for (i, (acc, plan)) in accs.iter().zip(plans).enumerate() {
        if std::mem::discriminant(acc) != std::mem::discriminant(&plan.new_acc()) {
            return Err(format!(
                "accumulator {} is not one of `{}`",
                i + 1,
                plan.function.name()
            ));
        }
        let count = match acc {
            Acc::Count(c) => u64::try_from(*c).unwrap_or(u64::MAX),
            Acc::Int { n, .. } | Acc::Float { n, .. } | Acc::Decimal { n, .. } => *n,
            Acc::Min(_) | Acc::Max(_) | Acc::Distinct(_) => 0,
        };
        if count >= MAX_COUNT {
            return Err(format!("accumulator {} counts {count} rows", i + 1));
        }
    }
    Ok(())
}

pub(super) fn update_accs(accs: &mut [Acc], plans: &[AggPlan], row: &[Value]) {
    for (acc, plan) in accs.iter_mut().zip(plans) {
        acc.update(plan.field.map(|c| &row[c]));
    }
}

impl Acc {
    /// Adds one row's value (`None`: the aggregate reads no field, i.e. `count` of rows).
    #[inline]
    fn update(&mut self, v: Option<&Value>) {
        let Some(v) = v else {
            if let Acc::Count(c) = self {
                *c += 1;
            }
            return;
        };
        if v.is_null() {
            return;
        }
        match self {
            Acc::Count(c) => *c += 1,
            Acc::Int { sum, n } => {
                if let Value::Int(x) = v {
                    *sum = sum.saturating_add(*x as i128);
                    *n += 1;
                }
            }
            Acc::Float { sum, n } => {
                let x = match v {
                    Value::Float(x) => *x,
                    Value::Int(x) => *x as f64,
                    _ => return,
                };
                *sum += x;
                *n += 1;
            }
            Acc::Decimal { sum, n } => {
                let x = match v {
                    Value::Decimal(x) => *x,
                    Value::Int(x) => Decimal::from(*x),
                    _ => return,
                };
                *sum = sum.saturating_add(x);
                *n += 1;
            }
            Acc::Min(m) => {
                if m.is_null() || v.total_cmp(m) == Ordering::Less {
                    *m = v.clone();
                }
            }
            Acc::Max(m) => {
                if m.is_null() || v.total_cmp(m) == Ordering::Greater {
                    *m = v.clone();
                }
            }
            Acc::Distinct(set) => {
                if !set.contains(v) {
                    set.insert(v.clone());
                }
            }
        }
    }

    /// Folds another accumulator of the same aggregate into this one (sessions merging).
    pub(super) fn merge(&mut self, other: Acc) {
        match (self, other) {
            (Acc::Count(a), Acc::Count(b)) => *a += b,
            (Acc::Int { sum, n }, Acc::Int { sum: s, n: m }) => {
                *sum = sum.saturating_add(s);
                *n += m;
            }
            (Acc::Float { sum, n }, Acc::Float { sum: s, n: m }) => {
                *sum += s;
                *n += m;
            }
            (Acc::Decimal { sum, n }, Acc::Decimal { sum: s, n: m }) => {
                *sum = sum.saturating_add(s);
                *n += m;
            }
            (Acc::Min(a), Acc::Min(b)) => {
                if !b.is_null() && (a.is_null() || b.total_cmp(a) == Ordering::Less) {
                    *a = b;
                }
            }
            (Acc::Max(a), Acc::Max(b)) => {
                if !b.is_null() && (a.is_null() || b.total_cmp(a) == Ordering::Greater) {
                    *a = b;
                }
            }
            (Acc::Distinct(a), Acc::Distinct(mut b)) => {
                if a.len() < b.len() {
                    std::mem::swap(a, &mut b);
                }
                a.extend(b);
            }
            (a, b) => unreachable!("accumulators of one aggregate differ: {a:?} and {b:?}"),
        }
    }

    /// The aggregate's current value.
    pub(super) fn finish(&self, function: AggregateFn) -> Value {
        let avg = function == AggregateFn::Avg;
        match self {
            Acc::Count(c) => Value::Int(*c),
            Acc::Int { n: 0, .. } | Acc::Float { n: 0, .. } | Acc::Decimal { n: 0, .. } => {
                Value::Null
            }
            Acc::Int { sum, n } if avg => Value::Float(*sum as f64 / *n as f64),
            Acc::Int { sum, .. } => Value::Int(clamp_i64(*sum)),
            Acc::Float { sum, n } if avg => Value::Float(*sum / *n as f64),
            Acc::Float { sum, .. } => Value::Float(*sum),
            Acc::Decimal { sum, n } if avg => Value::Float(
                sum.checked_div(Decimal::from(*n))
                    .and_then(|q| q.to_f64())
                    .unwrap_or_else(|| sum.to_f64().unwrap_or(f64::NAN) / *n as f64),
            ),
            Acc::Decimal { sum, .. } => Value::Decimal(*sum),
            Acc::Min(v) | Acc::Max(v) => v.clone(),
            Acc::Distinct(set) => Value::Int(set.len() as i64),
        }
    }
}
