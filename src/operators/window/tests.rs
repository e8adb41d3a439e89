//! Tests of the window operator driven through the harness: every aggregate and window kind,
//! lateness, retractions, spec errors, and scripts restored from a snapshot after every
//! step. The property tests against an oracle are in `proptests`.

use std::collections::HashSet;

use super::*;
use crate::testing::{EmittedRow, Harness};
use crate::time::watermark::END_OF_TIME;

pub(super) fn input() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("user", DataType::String),
        Field::new("amount", DataType::Int),
    ]))
}

pub(super) fn s(v: &str) -> Value {
    Value::from(v)
}

pub(super) fn i(v: i64) -> Value {
    Value::Int(v)
}

fn ts(ms: i64) -> Value {
    Value::Timestamp(ms * 1000)
}

fn batch(rows: &[(Value, Value, EventTime)]) -> Batch {
    let mut b = Batch::new(input());
    for (user, amount, t) in rows {
        b.push_row([user.clone(), amount.clone()], *t);
    }
    b
}

fn agg(name: &str, function: AggregateFn, field: Option<&str>) -> AggregateSpec {
    AggregateSpec {
        name: name.into(),
        function,
        field: field.map(Into::into),
    }
}

/// rows, n, total, lo, hi, mean, distinct: every function over `amount`.
pub(super) fn all_aggs() -> Vec<AggregateSpec> {
    use AggregateFn::*;
    vec![
        agg("rows", Count, None),
        agg("n", Count, Some("amount")),
        agg("total", Sum, Some("amount")),
        agg("lo", Min, Some("amount")),
        agg("hi", Max, Some("amount")),
        agg("mean", Avg, Some("amount")),
        agg("distinct", CountDistinct, Some("amount")),
    ]
}

/// rows and total only.
fn small_aggs() -> Vec<AggregateSpec> {
    vec![
        agg("rows", AggregateFn::Count, None),
        agg("total", AggregateFn::Sum, Some("amount")),
    ]
}

pub(super) fn spec(
    kind: WindowKind,
    lateness_ms: u64,
    aggregates: Vec<AggregateSpec>,
) -> WindowSpec {
    WindowSpec {
        key: vec!["user".into()],
        kind,
        allowed_lateness: Duration::from_millis(lateness_ms),
        aggregates,
    }
}

fn tumbling(size_ms: u64) -> WindowKind {
    WindowKind::Tumbling {
        size: Duration::from_millis(size_ms),
    }
}

fn sliding(size_ms: u64, slide_ms: u64) -> WindowKind {
    WindowKind::Sliding {
        size: Duration::from_millis(size_ms),
        slide: Duration::from_millis(slide_ms),
    }
}

fn session(gap_ms: u64) -> WindowKind {
    WindowKind::Session {
        gap: Duration::from_millis(gap_ms),
    }
}

fn harness(spec: &WindowSpec) -> Harness<WindowOperator> {
    Harness::new(WindowOperator::new("w", spec.clone(), input()).unwrap(), 1)
}

/// An expected `main` row: key, bounds, aggregates, revision; event time `end - 1`.
fn res(key: Value, start: i64, end: i64, aggs: &[Value], revision: i64) -> EmittedRow {
    let mut row = vec![key, ts(start), ts(end)];
    row.extend_from_slice(aggs);
    row.push(i(revision));
    (row, end - 1)
}

fn retraction(key: Value, start: i64, end: i64, n_aggs: usize) -> EmittedRow {
    res(key, start, end, &vec![Value::Null; n_aggs], RETRACTED)
}

#[test]
fn tumbling_computes_every_aggregate() {
    let mut h = harness(&spec(tumbling(10_000), 0, all_aggs()));
    h.data(
        0,
        batch(&[
            (s("a"), i(1), 1000),
            (s("a"), i(5), 2000),
            (s("b"), i(3), 3000),
            (s("a"), Value::Null, 4000),
            (Value::Null, i(2), 5000),
            (s("c"), Value::Null, 6000),
            (s("a"), i(5), 12_000),
            (s("b"), i(7), 15_000),
            (s("a"), i(1), 9999),
        ]),
    );
    h.watermark_all(9998);
    assert!(h.take_all().is_empty(), "nothing is due before end - 1");
    h.watermark_all(9999);
    let null = Value::Null;
    assert_eq!(
        h.take("main"),
        vec![
            // A null key is a group; nulls sort first.
            res(
                null.clone(),
                0,
                10_000,
                &[i(1), i(1), i(2), i(2), i(2), 2.0.into(), i(1)],
                0
            ),
            res(
                s("a"),
                0,
                10_000,
                &[i(4), i(3), i(7), i(1), i(5), (7.0 / 3.0).into(), i(2)],
                0
            ),
            res(
                s("b"),
                0,
                10_000,
                &[i(1), i(1), i(3), i(3), i(3), 3.0.into(), i(1)],
                0
            ),
            // Only nulls: count of rows 1, count of values 0, the rest null.
            res(
                s("c"),
                0,
                10_000,
                &[
                    i(1),
                    i(0),
                    null.clone(),
                    null.clone(),
                    null.clone(),
                    null,
                    i(0)
                ],
                0
            ),
        ]
    );
    h.watermark_all(19_999);
    assert_eq!(
        h.take("main"),
        vec![
            res(
                s("a"),
                10_000,
                20_000,
                &[i(1), i(1), i(5), i(5), i(5), 5.0.into(), i(1)],
                0
            ),
            res(
                s("b"),
                10_000,
                20_000,
                &[i(1), i(1), i(7), i(7), i(7), 7.0.into(), i(1)],
                0
            ),
        ]
    );
    assert!(h.take("late").is_empty());
    assert_eq!(h.operator().fired_count(), 6);
    assert_eq!(h.operator().late_count(), 0);
}

#[test]
fn sums_keep_the_field_type_and_never_wrap() {
    use AggregateFn::*;
    let schema = Arc::new(Schema::new(vec![
        Field::new("i", DataType::Int),
        Field::new("f", DataType::Float),
        Field::new("d", DataType::Decimal),
        Field::new("s", DataType::String),
    ]));
    let spec = WindowSpec {
        key: vec![],
        kind: tumbling(10),
        allowed_lateness: Duration::ZERO,
        aggregates: vec![
            agg("si", Sum, Some("i")),
            agg("ai", Avg, Some("i")),
            agg("sf", Sum, Some("f")),
            agg("sd", Sum, Some("d")),
            agg("ad", Avg, Some("d")),
            agg("mins", Min, Some("s")),
            agg("maxs", Max, Some("s")),
        ],
    };
    let op = WindowOperator::new("w", spec, schema.clone()).unwrap();
    let types: Vec<_> = op.ports()[0]
        .schema
        .fields
        .iter()
        .map(|f| (f.name.to_string(), f.data_type))
        .collect();
    use DataType::*;
    let expected_types = [
        ("window_start", Timestamp),
        ("window_end", Timestamp),
        ("si", Int),
        ("ai", Float),
        ("sf", Float),
        ("sd", Decimal),
        ("ad", Float),
        ("mins", String),
        ("maxs", String),
        ("revision", Int),
    ];
    let expected_types: Vec<_> = expected_types
        .iter()
        .map(|(n, t)| (n.to_string(), *t))
        .collect();
    assert_eq!(types, expected_types);
    assert_eq!(op.ports()[1].schema, schema);

    let mut h = Harness::new(op, 1);
    let mut b = Batch::new(schema);
    let dec = |s: &str| Value::Decimal(s.parse().unwrap());
    b.push_row([i(i64::MAX), 0.5.into(), dec("1.25"), s("pear")], 1);
    b.push_row([i(i64::MAX), 0.25.into(), dec("2.5"), s("apple")], 2);
    b.push_row([Value::Null, Value::Null, Value::Null, Value::Null], 3);
    h.data(0, b);
    h.watermark_all(9);
    let (row, t) = h.take("main").pop().unwrap();
    assert_eq!(t, 9);
    assert_eq!(
        row,
        vec![
            ts(0),
            ts(10),
            i(i64::MAX), // saturated, not wrapped
            Value::Float(i64::MAX as f64),
            0.75.into(),
            dec("3.75"),
            1.875.into(),
            s("apple"),
            s("pear"),
            i(0),
        ]
    );
}

#[test]
fn sliding_windows_overlap() {
    let mut h = harness(&spec(sliding(10_000, 5000), 0, small_aggs()));
    h.data(
        0,
        batch(&[
            (s("a"), i(1), 1000),
            (s("a"), i(2), 6000),
            (s("b"), i(4), 7000),
            (s("a"), i(8), 12_000),
        ]),
    );
    h.watermark_all(4999);
    assert_eq!(
        h.take("main"),
        vec![res(s("a"), -5000, 5000, &[i(1), i(1)], 0)]
    );
    h.watermark_all(30_000);
    assert_eq!(
        h.take("main"),
        vec![
            res(s("a"), 0, 10_000, &[i(2), i(3)], 0),
            res(s("b"), 0, 10_000, &[i(1), i(4)], 0),
            res(s("a"), 5000, 15_000, &[i(2), i(10)], 0),
            res(s("b"), 5000, 15_000, &[i(1), i(4)], 0),
            res(s("a"), 10_000, 20_000, &[i(1), i(8)], 0),
        ]
    );
}

#[test]
fn sliding_size_need_not_be_a_multiple_of_slide() {
    let mut h = harness(&spec(sliding(10, 4), 0, small_aggs()));
    h.data(0, batch(&[(s("a"), i(1), 9)]));
    h.watermark_all(END_OF_TIME);
    assert_eq!(
        h.take("main"),
        vec![
            res(s("a"), 0, 10, &[i(1), i(1)], 0),
            res(s("a"), 4, 14, &[i(1), i(1)], 0),
            res(s("a"), 8, 18, &[i(1), i(1)], 0),
        ]
    );
}

#[test]
fn sessions_merge_when_bridged_or_touching() {
    let mut h = harness(&spec(session(5000), 0, small_aggs()));
    h.data(
        0,
        batch(&[
            (s("a"), i(1), 1000),
            (s("b"), i(10), 2000),
            (s("a"), i(2), 10_000),
        ]),
    );
    h.watermark_all(4000);
    assert!(h.take_all().is_empty());
    // [5500, 10500) overlaps [1000, 6000) and [10000, 15000): one session.
    h.data(0, batch(&[(s("a"), i(4), 5500)]));
    assert!(h.take_all().is_empty());
    h.watermark_all(6999);
    assert_eq!(
        h.take("main"),
        vec![res(s("b"), 2000, 7000, &[i(1), i(10)], 0)]
    );
    h.watermark_all(14_999);
    assert_eq!(
        h.take("main"),
        vec![res(s("a"), 1000, 15_000, &[i(3), i(7)], 0)]
    );
    // Sessions that only touch (end == start) merge too.
    h.data(0, batch(&[(s("a"), i(1), 20_000), (s("a"), i(1), 25_000)]));
    h.watermark_all(40_000);
    assert_eq!(
        h.take("main"),
        vec![res(s("a"), 20_000, 30_000, &[i(2), i(2)], 0)]
    );
    assert_eq!(h.operator().fired_count(), 3);
}

#[test]
fn late_rows_within_lateness_update_and_beyond_go_late() {
    let mut h = harness(&spec(tumbling(10_000), 5000, small_aggs()));
    h.data(0, batch(&[(s("a"), i(1), 1000)]));
    h.watermark_all(9999);
    assert_eq!(
        h.take("main"),
        vec![res(s("a"), 0, 10_000, &[i(1), i(1)], 0)]
    );
    // Late rows update the window; its revisions wait until it expires, so how the late
    // rows were batched or interleaved never shows in the output.
    h.data(
        0,
        batch(&[
            (s("a"), i(2), 2000),
            (s("b"), i(4), 4000),
            (s("a"), i(3), 3000),
        ]),
    );
    h.data(0, batch(&[(s("b"), i(1), 4500)]));
    h.watermark_all(14_998);
    h.data(0, batch(&[(s("a"), i(5), 5000)]));
    assert!(
        h.take("main").is_empty(),
        "revisions come when the window expires"
    );
    // end - 1 + lateness = 14999: one revision per key (a new key starts at 0), then the
    // window is dropped.
    h.watermark_all(14_999);
    assert_eq!(
        h.take("main"),
        vec![
            res(s("a"), 0, 10_000, &[i(4), i(11)], 1),
            res(s("b"), 0, 10_000, &[i(2), i(5)], 0),
        ]
    );
    h.data(0, batch(&[(s("a"), i(6), 6000), (s("a"), i(7), 16_000)]));
    assert_eq!(h.take("late"), vec![(vec![s("a"), i(6)], 6000)]);
    assert!(h.take("main").is_empty(), "16000's window is not due yet");
    assert_eq!(h.operator().late_count(), 1);
    h.watermark_all(19_999);
    assert_eq!(
        h.take("main"),
        vec![res(s("a"), 10_000, 20_000, &[i(1), i(7)], 0)]
    );
    assert_eq!(h.operator().fired_count(), 3);
}

/// A batch whose rows carry lateness references (`None`: on time in their partition).
fn batch_behind(rows: &[(Value, Value, EventTime, Option<EventTime>)]) -> Batch {
    let plain: Vec<(Value, Value, EventTime)> = rows
        .iter()
        .map(|(a, b, t, _)| (a.clone(), b.clone(), *t))
        .collect();
    let mut b = batch(&plain);
    for (k, (_, _, _, l)) in rows.iter().enumerate() {
        if let Some(l) = l {
            b.mark_behind(k, *l);
        }
    }
    b
}

#[test]
fn lateness_is_decided_by_the_rows_reference_not_by_when_it_arrives() {
    // The same row, behind its partition's watermark by enough to miss its window (by the
    // reference, [0, 10s) expired at 14999), reaches the operator early (watermark 3000) in
    // one run and late (watermark 9999) in the other: late both times.
    for w in [3000, 9999] {
        let mut h = harness(&spec(tumbling(10_000), 5000, small_aggs()));
        h.data(0, batch(&[(s("a"), i(1), 1000)]));
        h.watermark_all(w);
        h.data(0, batch_behind(&[(s("a"), i(9), 2000, Some(15_000))]));
        assert_eq!(
            h.take("late"),
            vec![(vec![s("a"), i(9)], 2000)],
            "watermark {w}"
        );
        h.watermark_all(30_000);
        assert_eq!(
            h.take("main"),
            vec![res(s("a"), 0, 10_000, &[i(1), i(1)], 0)],
            "watermark {w}"
        );
    }
}

#[test]
fn a_row_late_by_its_reference_waits_for_its_window_to_fire_first() {
    // Late by its reference (due at 12000, within lateness) but arriving before the operator's
    // watermark made the window due: the first result is the on-time rows only, then one
    // revision with it when the window expires — as when it arrives after the window fired.
    let mut outputs = Vec::new();
    for early in [true, false] {
        let mut h = harness(&spec(tumbling(10_000), 5000, small_aggs()));
        h.data(0, batch(&[(s("a"), i(1), 1000)]));
        let late_row = batch_behind(&[(s("a"), i(2), 2000, Some(12_000))]);
        if early {
            h.watermark_all(5000);
            h.data(0, late_row);
            h.watermark_all(9999);
        } else {
            h.watermark_all(9999);
            h.data(0, late_row);
        }
        h.watermark_all(20_000);
        assert!(h.take("late").is_empty());
        outputs.push(h.take("main"));
    }
    assert_eq!(
        outputs[0],
        vec![
            res(s("a"), 0, 10_000, &[i(1), i(1)], 0),
            res(s("a"), 0, 10_000, &[i(2), i(3)], 1),
        ]
    );
    assert_eq!(outputs[0], outputs[1]);
}

#[test]
fn late_rows_retract_sessions_they_change() {
    let mut h = harness(&spec(session(5000), 10_000, small_aggs()));
    h.data(0, batch(&[(s("a"), i(1), 1000), (s("a"), i(2), 7000)]));
    h.watermark_all(12_000);
    assert_eq!(
        h.take("main"),
        vec![
            res(s("a"), 1000, 6000, &[i(1), i(1)], 0),
            res(s("a"), 7000, 12_000, &[i(1), i(2)], 0),
        ]
    );
    // Bridges both fired sessions: both are retracted, the merged one is due at once.
    h.data(0, batch(&[(s("a"), i(4), 5000)]));
    assert_eq!(
        h.take("main"),
        vec![
            retraction(s("a"), 1000, 6000, 2),
            retraction(s("a"), 7000, 12_000, 2),
            res(s("a"), 1000, 12_000, &[i(3), i(7)], 0),
        ]
    );
    // Inside the session, bounds unchanged: a revision.
    h.data(0, batch(&[(s("a"), i(8), 1000)]));
    assert_eq!(
        h.take("main"),
        vec![res(s("a"), 1000, 12_000, &[i(4), i(15)], 1)]
    );
    // Extends past the watermark: retracted now, the new session fires when due.
    h.data(0, batch(&[(s("a"), i(16), 11_000)]));
    assert_eq!(h.take("main"), vec![retraction(s("a"), 1000, 12_000, 2)]);
    h.watermark_all(15_999);
    assert_eq!(
        h.take("main"),
        vec![res(s("a"), 1000, 16_000, &[i(5), i(31)], 0)]
    );
    // Dropped at 15999 + 10000; a row that would have joined it starts a new session.
    h.watermark_all(25_999);
    h.data(0, batch(&[(s("a"), i(32), 14_000), (s("a"), i(64), 2000)]));
    assert_eq!(
        h.take("main"),
        vec![res(s("a"), 14_000, 19_000, &[i(1), i(32)], 0)]
    );
    assert_eq!(h.take("late"), vec![(vec![s("a"), i(64)], 2000)]);
    assert_eq!(h.operator().late_count(), 1);
}

#[test]
fn watermark_going_back_is_ignored() {
    // A restarted runtime may re-announce an older watermark; it must not reopen windows.
    let mut op = WindowOperator::new("w", spec(tumbling(10), 0, small_aggs()), input()).unwrap();
    let mut out = Output::new(op.ports());
    op.on_watermark(100, &mut out);
    op.on_watermark(50, &mut out);
    assert_eq!(op.watermark(), Some(100));
    op.process(0, batch(&[(s("a"), i(1), 60)]), &mut out);
    let drained: Vec<_> = out.drain().map(|(port, b)| (port, b.len())).collect();
    assert_eq!(drained, vec![(LATE, 1)]);
    assert_eq!(op.late_count(), 1);
}

#[test]
fn spec_errors_name_the_field() {
    use AggregateFn::*;
    let check = |spec: WindowSpec, field: &str, needle: &str| {
        let e = WindowOperator::new("w", spec, input()).unwrap_err();
        assert_eq!(e.field, field, "{e}");
        assert!(e.message.contains(needle), "{e}");
    };
    let base = || spec(tumbling(10), 0, small_aggs());
    check(
        WindowSpec {
            key: vec!["nope".into()],
            ..base()
        },
        "key[0]",
        "unknown field `nope`",
    );
    check(
        WindowSpec {
            key: vec!["user".into(), "user".into()],
            ..base()
        },
        "key[1]",
        "already part of the key",
    );
    check(
        WindowSpec {
            kind: tumbling(0),
            ..base()
        },
        "kind.size",
        "greater than zero",
    );
    check(
        WindowSpec {
            kind: WindowKind::Tumbling {
                size: Duration::from_micros(1500),
            },
            ..base()
        },
        "kind.size",
        "whole number of milliseconds",
    );
    check(
        WindowSpec {
            kind: sliding(10, 20),
            ..base()
        },
        "kind.slide",
        "must not exceed",
    );
    check(
        WindowSpec {
            kind: session(0),
            ..base()
        },
        "kind.gap",
        "greater than zero",
    );
    let with = |aggs: Vec<AggregateSpec>| WindowSpec {
        aggregates: aggs,
        ..base()
    };
    check(
        with(vec![agg("x", Sum, None)]),
        "aggregates[0].field",
        "needs a field",
    );
    check(
        with(vec![agg("x", Sum, Some("user"))]),
        "aggregates[0].field",
        "not string",
    );
    check(
        with(vec![agg("x", Avg, Some("nope"))]),
        "aggregates[0].field",
        "unknown field",
    );
    check(
        with(vec![agg("x", Count, None), agg("x", Max, Some("user"))]),
        "aggregates[1].name",
        "earlier aggregate",
    );
    for name in ["user", "window_start", "window_end", "revision"] {
        check(
            with(vec![agg(name, Count, None)]),
            "aggregates[0].name",
            "already an output",
        );
    }
    // min/max and count_distinct take any type; count needs no field.
    let ok = with(vec![
        agg("a", Min, Some("user")),
        agg("b", CountDistinct, Some("user")),
        agg("c", Count, None),
    ]);
    assert!(WindowOperator::new("w", ok, input()).is_ok());
    for f in AggregateFn::NAMES {
        assert_eq!(AggregateFn::parse(f).unwrap().name(), *f);
    }
    assert_eq!(AggregateFn::parse("mean"), None);
}

#[test]
fn restore_rejects_a_snapshot_of_another_spec() {
    let mut h = harness(&spec(tumbling(10), 0, small_aggs()));
    h.data(0, batch(&[(s("a"), i(1), 1)]));
    let snap = h.barrier();
    let mut other = WindowOperator::new("w", spec(tumbling(20), 0, small_aggs()), input()).unwrap();
    assert!(matches!(
        other.restore(&snap),
        Err(StateError::Decode { .. })
    ));
    let mut same = WindowOperator::new("w", spec(tumbling(10), 0, small_aggs()), input()).unwrap();
    same.restore(&snap).unwrap();
    assert!(
        same.restore(&StateImage::inline(
            snap.bytes[..snap.bytes.len() / 2].to_vec()
        ))
        .is_err()
    );
}

// -----------------------------------------------------------------------------------------
// Scripts: driving an operator straight through, or with a checkpoint and restore.

#[derive(Clone, Debug)]
pub(super) enum Step {
    Data(Vec<(Value, Value, EventTime)>),
    Watermark(EventTime),
}

#[derive(Debug, PartialEq)]
pub(super) struct RunOutput {
    pub(super) main: Vec<EmittedRow>,
    pub(super) late: Vec<EmittedRow>,
    pub(super) late_count: u64,
    pub(super) fired_count: u64,
}

/// Runs `steps`; with `restore_after: Some(i)`, snapshots after step `i` and continues on a
/// fresh operator restored from it. Checks that no call emits two rows for one result.
pub(super) fn run(spec: &WindowSpec, steps: &[Step], restore_after: Option<usize>) -> RunOutput {
    let mut h = harness(spec);
    let (mut main, mut late) = (Vec::new(), Vec::new());
    for (n, step) in steps.iter().enumerate() {
        match step {
            Step::Data(rows) => h.data(0, batch(rows)),
            Step::Watermark(t) => h.watermark_all(*t),
        }
        let rows = h.take("main");
        let ids: HashSet<&[Value]> = rows.iter().map(|(r, _)| &r[..3]).collect();
        assert_eq!(
            ids.len(),
            rows.len(),
            "one row per result per call: {rows:?}"
        );
        main.extend(rows);
        late.extend(h.take("late"));
        if restore_after == Some(n) {
            let snap = h.barrier();
            let fresh = WindowOperator::new("w", spec.clone(), input()).unwrap();
            h = Harness::restore(fresh, &snap, 1);
        }
    }
    RunOutput {
        main,
        late,
        late_count: h.operator().late_count(),
        fired_count: h.operator().fired_count(),
    }
}

/// A hand-written script with on-time rows, late rows within lateness, rows beyond it,
/// merges and several keys.
fn script() -> Vec<Step> {
    use Step::*;
    vec![
        Data(vec![
            (s("a"), i(1), 1000),
            (s("b"), i(2), 2500),
            (s("a"), i(3), 4000),
        ]),
        Watermark(3000),
        Data(vec![
            (s("a"), i(4), 9000),
            (s("b"), Value::Null, 9500),
            (s("c"), i(5), 11_000),
        ]),
        Watermark(10_000),
        Data(vec![
            (s("a"), i(6), 6000),
            (s("b"), i(7), 3000),
            (s("c"), i(8), 500),
        ]),
        Watermark(16_000),
        Data(vec![
            (s("a"), i(9), 14_500),
            (s("a"), i(10), 21_000),
            (s("b"), i(11), 1000),
        ]),
        Watermark(22_000),
        Data(vec![(s("c"), i(12), 17_000), (s("a"), i(13), 30_000)]),
        Watermark(END_OF_TIME),
    ]
}

fn check_restore_everywhere(spec: &WindowSpec) {
    let steps = script();
    let straight = run(spec, &steps, None);
    assert!(straight.late_count > 0, "the script exercises late rows");
    assert!(
        straight.main.iter().any(|(r, _)| r.last() != Some(&i(0))),
        "and revisions"
    );
    for n in 0..steps.len() {
        assert_eq!(
            run(spec, &steps, Some(n)),
            straight,
            "restored after step {n}"
        );
    }
}

#[test]
fn tumbling_restore_continues_exactly() {
    check_restore_everywhere(&spec(tumbling(5000), 3000, all_aggs()));
}

#[test]
fn sliding_restore_continues_exactly() {
    check_restore_everywhere(&spec(sliding(6000, 2000), 3000, all_aggs()));
}

#[test]
fn session_restore_continues_exactly() {
    let spec = spec(session(3000), 8000, all_aggs());
    check_restore_everywhere(&spec);
    let straight = run(&spec, &script(), None);
    assert!(
        straight
            .main
            .iter()
            .any(|(r, _)| r.last() == Some(&i(RETRACTED)))
    );
}

/// Regression: the rows a window keeps aside are whole input rows, restored by position: with
/// the input's columns reordered between runs, `amount` would have been read from `user`.
/// They are mapped by name (a new column is null); a column whose type changed is refused.
#[test]
fn rows_kept_aside_are_restored_by_column_name() {
    let mut h = harness(&spec(tumbling(10_000), 5000, small_aggs()));
    h.data(0, batch(&[(s("a"), i(1), 1000)]));
    h.watermark_all(5000);
    // Late by its reference, kept aside until the window fires.
    h.data(0, batch_behind(&[(s("a"), i(2), 2000, Some(12_000))]));
    let snap = h.barrier();

    let reordered = Arc::new(Schema::new(vec![
        Field::new("note", DataType::String),
        Field::new("amount", DataType::Int),
        Field::new("user", DataType::String),
    ]));
    let fresh =
        WindowOperator::new("w", spec(tumbling(10_000), 5000, small_aggs()), reordered).unwrap();
    let mut h = Harness::restore(fresh, &snap, 1);
    h.watermark_all(20_000);
    let main = h.take("main");
    assert_eq!(main.len(), 2, "{main:?}");
    // The key is the last column now, aggregates follow the bounds.
    assert_eq!(main[1].0[0], s("a"));
    assert_eq!(&main[1].0[3..5], &[i(2), i(3)], "{main:?}");

    let retyped = Arc::new(Schema::new(vec![
        Field::new("user", DataType::String),
        Field::new("amount", DataType::Float),
    ]));
    let mut op =
        WindowOperator::new("w", spec(tumbling(10_000), 5000, small_aggs()), retyped).unwrap();
    let err = op.restore(&snap).unwrap_err().to_string();
    assert!(err.contains("`amount`") && err.contains("int"), "{err}");
}
