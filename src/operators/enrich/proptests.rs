//! Property tests of the enrichment operator: materializing a random database history
//! (snapshot shuffled into the stream, replays) equals the final database state, in memory
//! and on disk; as-of joins equal a nested loop over the history; and a restore after any
//! step continues as an uninterrupted run, for every mode, miss policy and strategy.

use std::sync::Arc;

use proptest::prelude::*;

use super::tests::{END, change_schema, changes, events, op, s, spec};
use super::{EnrichOperator, EnrichSpec, EnrichStrategy, JoinMode, MissPolicy};
use crate::state::StateBackend;
use crate::testing::Harness;
use crate::time::Watermark;
use crate::types::{Batch, DataType, EventTime, Field, Schema, Value};

/// A random script: reference changes (ids 0..4, products p0..p2, increasing LSNs with
/// replays), events (products p0..p3), watermarks.
#[derive(Clone, Debug)]
enum Step {
    Change {
        id: i64,
        product: u8,
        cve: u8,
        delete: bool,
        lsn_back: u8,
        t: i64,
    },
    Event {
        product: u8,
        t: i64,
    },
    Watermark(i64),
    SnapshotEnd,
}

fn arb_steps() -> impl Strategy<Value = Vec<Step>> {
    let step = prop_oneof![
        3 => (0i64..4, 0u8..3, 0u8..5, prop::bool::weighted(0.2), prop_oneof![4 => Just(0u8), 1 => 1u8..4], 0i64..100)
            .prop_map(|(id, product, cve, delete, lsn_back, t)| Step::Change { id, product, cve, delete, lsn_back, t }),
        4 => (0u8..4, 0i64..100).prop_map(|(product, t)| Step::Event { product, t }),
        1 => (0i64..100).prop_map(Step::Watermark),
        1 => Just(Step::SnapshotEnd),
    ];
    prop::collection::vec(step, 1..60)
}

/// The steps with every reference change after the watermark (as a source's watermark
/// promises); events may still be late.
fn lawful(steps: &[Step]) -> Vec<Step> {
    lawful_ahead(steps, 0)
}

/// `lawful` for a reference side whose watermark runs `ahead` of the events' (`drive_ahead`).
fn lawful_ahead(steps: &[Step], ahead: i64) -> Vec<Step> {
    let mut wm = i64::MIN;
    steps
        .iter()
        .map(|st| match st {
            Step::Watermark(t) => {
                wm = wm.max(*t);
                st.clone()
            }
            Step::Change {
                id,
                product,
                cve,
                delete,
                lsn_back,
                t,
            } => Step::Change {
                id: *id,
                product: *product,
                cve: *cve,
                delete: *delete,
                lsn_back: *lsn_back,
                t: (*t).max(wm.saturating_add(ahead).saturating_add(1)),
            },
            _ => st.clone(),
        })
        .collect()
}

/// Turns steps into batches: changes get increasing LSNs (or replay an earlier one).
fn script(steps: &[Step]) -> Vec<(usize, Option<Batch>, Option<i64>)> {
    let mut lsn = 0i64;
    let mut out = Vec::new();
    let mut wm = 0;
    for st in steps {
        match st {
            Step::Change {
                id,
                product,
                cve,
                delete,
                lsn_back,
                t,
            } => {
                lsn += 1;
                let l = (lsn - *lsn_back as i64).max(1);
                let p = format!("p{product}");
                let c = format!("CVE-{cve}");
                let o = if *delete { "d" } else { "u" };
                out.push((
                    1,
                    Some(changes(&[((o, l, *id, &p, &c, "*", "", ""), *t)])),
                    None,
                ));
            }
            Step::Event { product, t } => {
                let p = format!("p{product}");
                out.push((0, Some(events(&[("h", &p, "1", *t)])), None));
            }
            Step::Watermark(t) => {
                wm = wm.max(*t);
                out.push((0, None, Some(wm)));
            }
            Step::SnapshotEnd => out.push((
                1,
                Some(changes(&[((END, 0, 0, "", "", "", "", ""), 0)])),
                None,
            )),
        }
    }
    out
}

fn drive(
    spec: &EnrichSpec,
    steps: &[(usize, Option<Batch>, Option<i64>)],
    restore_after: Option<usize>,
) -> Vec<(Vec<Value>, EventTime)> {
    let mut h = Harness::new(op(spec.clone()), 2);
    let mut all = Vec::new();
    for (n, (input, batch, wm)) in steps.iter().enumerate() {
        if let Some(b) = batch {
            h.data(*input, b.clone());
        }
        if let Some(w) = wm {
            h.watermark_all(*w);
        }
        all.extend(h.take("main"));
        if restore_after == Some(n) {
            let snap = h.barrier();
            h = Harness::restore(op(spec.clone()), &snap, 2);
            if let Some(w) = steps[..=n].iter().filter_map(|s| s.2).max() {
                h.watermark_all(w);
                all.extend(h.take("main"));
            }
        }
    }
    h.watermark_all(crate::time::watermark::END_OF_TIME);
    all.extend(h.take("main"));
    all
}

/// `drive` without restores, the reference side's watermark `ahead` of the events' (a
/// table whose changes predate the events): as-of events behind it are joined at once.
fn drive_ahead(
    spec: &EnrichSpec,
    steps: &[(usize, Option<Batch>, Option<i64>)],
    ahead: i64,
) -> Vec<(Vec<Value>, EventTime)> {
    let mut h = Harness::new(op(spec.clone()), 2);
    let mut all = Vec::new();
    for (input, batch, wm) in steps {
        if let Some(b) = batch {
            h.data(*input, b.clone());
        }
        if let Some(w) = wm {
            h.watermark(1, Watermark::EventTime(w + ahead));
            h.watermark(0, Watermark::EventTime(*w));
        }
        all.extend(h.take("main"));
    }
    h.watermark_all(crate::time::watermark::END_OF_TIME);
    all.extend(h.take("main"));
    all
}

/// Runs `steps` on `former` instances as the runtime spreads an unkeyed operator's input
/// (event batches in turn to each instance, table changes and watermarks to all), and after
/// step `cut` on `now` instances restored from their snapshots; returns everything emitted
/// on `main`, sorted.
fn drive_rescaled(
    spec: &EnrichSpec,
    steps: &[(usize, Option<Batch>, Option<i64>)],
    cut: usize,
    former: usize,
    now: usize,
) -> Vec<(Vec<Value>, EventTime)> {
    let mut instances: Vec<Harness<EnrichOperator>> = (0..former)
        .map(|_| Harness::new(op(spec.clone()), 2))
        .collect();
    let (mut all, mut next) = (Vec::new(), 0);
    for (n, (input, batch, wm)) in steps.iter().enumerate() {
        if let Some(b) = batch {
            if *input == 0 {
                next = (next + 1) % instances.len();
                instances[next].data(0, b.clone());
            } else {
                instances.iter_mut().for_each(|h| h.data(*input, b.clone()));
            }
        }
        if let Some(w) = wm {
            instances.iter_mut().for_each(|h| h.watermark_all(*w));
        }
        for h in &mut instances {
            all.extend(h.take("main"));
        }
        if n == cut {
            let snapshots: Vec<_> = instances.iter_mut().map(Harness::barrier).collect();
            instances = (0..now)
                .map(|i| Harness::restore_rescaled(op(spec.clone()), i, now, &snapshots, 2))
                .collect();
            next = 0;
            if let Some(w) = steps[..=n].iter().filter_map(|s| s.2).max() {
                for h in &mut instances {
                    h.watermark_all(w);
                    all.extend(h.take("main"));
                }
            }
        }
    }
    for h in &mut instances {
        h.watermark_all(crate::time::watermark::END_OF_TIME);
        all.extend(h.take("main"));
    }
    all.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    all
}

/// One database operation of the materialization oracle.
#[derive(Clone, Debug)]
enum DbOp {
    Upsert {
        id: i64,
        product: u8,
    },
    Delete {
        id: i64,
    },
    /// A primary-key change: the row moves from `id` to `to`.
    Rekey {
        id: i64,
        to: i64,
    },
}

fn arb_history() -> impl Strategy<Value = Vec<Vec<DbOp>>> {
    let op = prop_oneof![
        4 => (0i64..6, 0u8..4).prop_map(|(id, product)| DbOp::Upsert { id, product }),
        1 => (0i64..6).prop_map(|id| DbOp::Delete { id }),
        1 => (0i64..6, 0i64..6).prop_map(|(id, to)| DbOp::Rekey { id, to }),
    ];
    prop::collection::vec(prop::collection::vec(op, 1..4), 1..25)
}

/// A change row of the oracle's table (`id`, `product`) at `(lsn, ordinal)`.
fn oracle_change(
    b: &mut Batch,
    op: &str,
    lsn: i64,
    ordinal: i64,
    id: i64,
    product: Option<String>,
) {
    b.push_row(
        [
            s(op),
            Value::Int(lsn),
            Value::Int(ordinal),
            s(if op == "r" { "true" } else { "false" }),
            Value::Null,
            Value::Int(id),
            product.map_or(Value::Null, |p| s(&p)),
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
        ],
        lsn,
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Oracle: a random database history (upserts, deletes, primary-key changes), seen as a
    /// snapshot at a random point whose rows arrive shuffled and interleaved with the
    /// streaming changes after it, with streaming changes replayed at random (at-least-once
    /// delivery), materializes into exactly the final database state, in memory and on
    /// disk (a cache of two keys).
    #[test]
    fn materialized_table_equals_the_final_database_state(
        history in arb_history(),
        snapshot_after in 0usize..25,
        shuffle in prop::collection::vec(0usize..1000, 0..40),
        replays in prop::collection::vec((0usize..1000, 0usize..1000), 0..15),
        on_disk in any::<bool>(),
    ) {
        use std::collections::BTreeMap;
        let mut db: BTreeMap<i64, String> = BTreeMap::new();
        // Streaming change rows after the snapshot, as (op, lsn, ordinal, id, product).
        type Row = (&'static str, i64, i64, i64, Option<String>);
        let mut streamed: Vec<Row> = Vec::new();
        let snapshot_after = snapshot_after % (history.len() + 1);
        let mut snapshot: Vec<Row> = Vec::new();
        for (tx, ops) in history.iter().enumerate() {
            if tx == snapshot_after {
                let lsn = tx as i64 * 100 + 50;
                snapshot = db.iter().map(|(id, p)| ("r", lsn, 0, *id, Some(p.clone()))).collect();
            }
            let commit = tx as i64 * 100 + 100;
            let mut changes: Vec<Row> = Vec::new();
            for op in ops {
                let ordinal = changes.len() as i64 + 1;
                match op {
                    DbOp::Upsert { id, product } => {
                        let o = if db.contains_key(id) { "u" } else { "c" };
                        let p = format!("p{product}");
                        db.insert(*id, p.clone());
                        changes.push((o, commit, ordinal, *id, Some(p)));
                    }
                    DbOp::Delete { id } => {
                        if db.remove(id).is_some() {
                            changes.push(("d", commit, ordinal, *id, None));
                        }
                    }
                    DbOp::Rekey { id, to } => {
                        if id != to && db.contains_key(id) && !db.contains_key(to) {
                            let p = db.remove(id).expect("present");
                            db.insert(*to, p.clone());
                            changes.push(("d", commit, ordinal, *id, None));
                            changes.push(("c", commit, ordinal + 1, *to, Some(p)));
                        }
                    }
                }
            }
            if tx >= snapshot_after {
                streamed.extend(changes);
            }
        }
        if snapshot_after == history.len() {
            let lsn = history.len() as i64 * 100 + 50;
            snapshot = db.iter().map(|(id, p)| ("r", lsn, 0, *id, Some(p.clone()))).collect();
        }
        // Shuffle the snapshot rows, then interleave them with the streamed changes.
        for (k, j) in shuffle.iter().enumerate() {
            if !snapshot.is_empty() {
                let a = k % snapshot.len();
                let b = j % snapshot.len();
                snapshot.swap(a, b);
            }
        }
        let mut delivery: Vec<Row> = Vec::new();
        let mut si = snapshot.into_iter();
        for (n, c) in streamed.iter().enumerate() {
            if shuffle.get(n).is_some_and(|x| x % 2 == 0)
                && let Some(r) = si.next()
            {
                delivery.push(r);
            }
            delivery.push(c.clone());
            for (at, which) in &replays {
                if at % (streamed.len().max(1)) == n {
                    delivery.push(streamed[which % (n + 1)].clone());
                }
            }
        }
        delivery.extend(si);

        let spec = EnrichSpec {
            table: "t".into(),
            primary_key: vec!["id".into()],
            key: vec![("id".into(), "id".into())],
            columns: Some(vec!["product".into()]),
            distinct: Vec::new(),
            version_range: None,
            conditions: Vec::new(),
            mode: JoinMode::Lookup,
            miss: MissPolicy::Emit,
            strategy: EnrichStrategy::Gradual,
            state: if on_disk {
                StateBackend::Disk(crate::state::disk::DiskOptions { dir: None, cache_rows: 2 })
            } else {
                StateBackend::Memory
            },
        };
        let events = Arc::new(Schema::new(vec![Field::new("id", DataType::Int)]));
        let op = EnrichOperator::new("oracle", spec, events.clone(), &change_schema()).unwrap();
        let mut h = Harness::new(op, 2);
        let mut b = Batch::new(change_schema());
        for (o, lsn, ordinal, id, p) in &delivery {
            oracle_change(&mut b, o, *lsn, *ordinal, *id, p.clone());
        }
        h.data(1, b);
        let mut probe = Batch::new(events);
        for id in 0..6 {
            probe.push_row([Value::Int(id)], 0);
        }
        h.data(0, probe);
        let got: BTreeMap<i64, String> = h
            .take("main")
            .into_iter()
            .filter_map(|(r, _)| Some((r[0].as_i64()?, r[1].as_str()?.to_string())))
            .collect();
        prop_assert_eq!(got, db);
        prop_assert_eq!(h.operator().reference_rows(), h.operator().table.len());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Oracle: as-of enrichment equals a nested loop over the reference history, per
    /// event: the rows whose latest version (by LSN, replays ignored) with a
    /// `valid_from <= t` is live and has the event's product; with `distinct: [cve]`, the
    /// first of those (by id) per CVE.
    #[test]
    /// The reference side's watermark may run ahead of the events' (`ahead`): events behind
    /// it are joined at once, the others when the merged watermark passes them; the same
    /// rows either way.
    #[test]
    fn as_of_join_equals_a_nested_loop_over_the_history(steps in arb_steps(), distinct in any::<bool>(), ahead in prop_oneof![Just(0i64), 1i64..50]) {
        let steps = lawful_ahead(&steps, ahead);
        let mut spec = spec(JoinMode::AsOf { retention_ms: None }, MissPolicy::Emit, EnrichStrategy::Gradual);
        if distinct {
            spec.distinct = vec!["cve".into()];
        }
        let got = drive_ahead(&spec, &script(&steps), ahead);
        // The history as the materializer sees it: per id, versions in LSN order.
        let mut lsn = 0i64;
        // (id, lsn, valid_from, live row as (product, cve)).
        type Version = (i64, i64, i64, Option<(String, String)>);
        let mut history: Vec<Version> = Vec::new();
        let mut expected = Vec::new();
        for st in &steps {
            match st {
                Step::Change { id, product, cve, delete, lsn_back, t } => {
                    lsn += 1;
                    let l = (lsn - *lsn_back as i64).max(1);
                    let newest = history.iter().filter(|h| h.0 == *id).map(|h| h.1).max();
                    if newest.is_none_or(|n| l > n) {
                        history.push((*id, l, *t, (!delete).then(|| (format!("p{product}"), format!("CVE-{cve}")))));
                    }
                }
                Step::Event { product, t } => expected.push((format!("p{product}"), *t)),
                _ => {}
            }
        }
        // Every event is joined at end of input at the latest; against the full history.
        let mut want: Vec<(i64, String, String)> = Vec::new();
        for (p, t) in &expected {
            let mut matches = Vec::new();
            for id in 0..4 {
                let v = history.iter().filter(|h| h.0 == id && h.2 <= *t).max_by_key(|h| h.1);
                if let Some((_, _, _, Some((prod, cve)))) = v
                    && prod == p
                    && !(distinct && matches.contains(cve))
                {
                    matches.push(cve.clone());
                }
            }
            if matches.is_empty() {
                want.push((*t, p.clone(), "-".into()));
            }
            for c in matches {
                want.push((*t, p.clone(), c));
            }
        }
        let mut got: Vec<(i64, String, String)> = got
            .iter()
            .map(|(r, t)| (*t, r[1].as_str().unwrap().to_string(), r[3].as_str().unwrap_or("-").to_string()))
            .collect();
        got.sort();
        want.sort();
        prop_assert_eq!(got, want);
    }

    /// Checkpoint after any step, restore into a fresh instance, continue: the same
    /// output as an uninterrupted run, for every mode, miss policy and strategy, with and
    /// without `distinct`. With the table on disk (a cache of two keys), the same output
    /// as in memory.
    #[test]
    fn restore_anywhere_matches_uninterrupted(steps in arb_steps(), cut in 0usize..60, which in 0usize..8, distinct in any::<bool>()) {
        let mut spec = match which % 4 {
            0 => spec(JoinMode::Lookup, MissPolicy::Emit, EnrichStrategy::Gated { max_buffered: 5 }),
            1 => spec(JoinMode::AsOf { retention_ms: Some(30) }, MissPolicy::Emit, EnrichStrategy::Gradual),
            2 => spec(JoinMode::Lookup, MissPolicy::Hold { timeout_ms: 20 }, EnrichStrategy::Gradual),
            _ => spec(JoinMode::AsOf { retention_ms: None }, MissPolicy::Hold { timeout_ms: 20 }, EnrichStrategy::Gated { max_buffered: 100 }),
        };
        if distinct {
            spec.distinct = vec!["cve".into()];
        }
        let s = script(&lawful(&steps));
        let in_memory = drive(&spec, &s, None);
        if which >= 4 {
            spec.state = StateBackend::Disk(crate::state::disk::DiskOptions { dir: None, cache_rows: 2 });
        }
        let straight = drive(&spec, &s, None);
        let restored = drive(&spec, &s, Some(cut % s.len()));
        prop_assert_eq!(&straight, &in_memory);
        prop_assert_eq!(straight, restored);
    }
}

proptest! {
    // Every case builds up to eight operators (with the table on disk, eight stores).
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    /// Checkpoint after any step with 1 to 4 instances, restore into 1 to 4, continue: the
    /// same rows as an uninterrupted run on one instance, for every mode, miss policy and
    /// strategy, in memory and on disk.
    #[test]
    fn rescaling_anywhere_matches_uninterrupted(
        steps in arb_steps(),
        cut in 0usize..60,
        which in 0usize..8,
        former in 1usize..=4,
        now in 1usize..=4,
    ) {
        let mut spec = match which % 4 {
            0 => spec(JoinMode::Lookup, MissPolicy::Emit, EnrichStrategy::Gated { max_buffered: 5 }),
            1 => spec(JoinMode::AsOf { retention_ms: Some(30) }, MissPolicy::Emit, EnrichStrategy::Gradual),
            2 => spec(JoinMode::Lookup, MissPolicy::Hold { timeout_ms: 20 }, EnrichStrategy::Gradual),
            _ => spec(JoinMode::AsOf { retention_ms: None }, MissPolicy::Hold { timeout_ms: 20 }, EnrichStrategy::Gated { max_buffered: 100 }),
        };
        if which >= 4 {
            spec.state = StateBackend::Disk(crate::state::disk::DiskOptions { dir: None, cache_rows: 2 });
        }
        let s = script(&lawful(&steps));
        let mut straight = drive(&spec, &s, None);
        straight.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        prop_assert_eq!(drive_rescaled(&spec, &s, cut % s.len(), former, now), straight);
    }
}
