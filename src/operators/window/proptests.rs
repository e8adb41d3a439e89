//! Property tests of the window operator: random scripts of rows and watermarks against an
//! oracle, a naive recomputation of the final result of every (key, window), and restores
//! at random steps against an uninterrupted run.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use proptest::prelude::*;

use super::tests::{RunOutput, Step, all_aggs, i, input, run, s, spec};
use super::{RETRACTED, WindowKind};
use super::{WindowOperator, WindowSpec};
use crate::dataflow::key_group::{key_hasher, owner_of_row};
use crate::testing::EmittedRow;
use crate::testing::Harness;
use crate::time::watermark::END_OF_TIME;
use crate::types::Batch;
use crate::types::{EventTime, Value};

/// A result's identity: key, window start, window end (milliseconds).
type ResultId = (Vec<Value>, EventTime, EventTime);
type Results = HashMap<ResultId, Vec<Value>>;
/// An oracle session: start, end, amounts, dropped.
type OracleSession = (i64, i64, Vec<Value>, bool);

#[derive(Clone, Copy, Debug)]
enum Shape {
    Tumbling(i64),
    Sliding(i64, i64),
    Session(i64),
}

impl Shape {
    fn kind(self) -> WindowKind {
        let ms = |v: i64| Duration::from_millis(v as u64);
        match self {
            Shape::Tumbling(size) => WindowKind::Tumbling { size: ms(size) },
            Shape::Sliding(size, slide) => WindowKind::Sliding {
                size: ms(size),
                slide: ms(slide),
            },
            Shape::Session(gap) => WindowKind::Session { gap: ms(gap) },
        }
    }
}

/// The aggregates of `all_aggs` over the `amount` values of a window's rows.
fn oracle_aggs(values: &[Value]) -> Vec<Value> {
    let ints: Vec<i64> = values.iter().filter_map(Value::as_i64).collect();
    let sum: i64 = ints.iter().sum();
    let distinct: HashSet<i64> = ints.iter().copied().collect();
    let or_null = |v: Option<Value>| v.unwrap_or(Value::Null);
    let nonempty = !ints.is_empty();
    vec![
        i(values.len() as i64),
        i(ints.len() as i64),
        or_null(nonempty.then(|| i(sum))),
        or_null(ints.iter().min().map(|&v| i(v))),
        or_null(ints.iter().max().map(|&v| i(v))),
        or_null(nonempty.then(|| Value::Float(sum as f64 / ints.len() as f64))),
        i(distinct.len() as i64),
    ]
}

/// What every (key, window) must finally hold, and the rows that must go to `late`.
fn oracle(shape: Shape, lateness: i64, steps: &[Step]) -> (Results, Vec<EmittedRow>) {
    let mut w: Option<EventTime> = None;
    let expired = |end: i64, w: Option<i64>| w.is_some_and(|w| end - 1 + lateness <= w);
    let mut members: HashMap<ResultId, Vec<Value>> = HashMap::new();
    let mut late = Vec::new();
    // Sessions per key: (start, end, amounts, dropped).
    let mut sessions: HashMap<Value, Vec<OracleSession>> = HashMap::new();
    for step in steps {
        let rows = match step {
            Step::Watermark(t) => {
                w = Some(*t);
                for list in sessions.values_mut() {
                    for s in list.iter_mut() {
                        s.3 |= expired(s.1, w);
                    }
                }
                continue;
            }
            Step::Data(rows) => rows,
        };
        for (k, v, t) in rows.iter().cloned() {
            let accepted = match shape {
                Shape::Tumbling(size) | Shape::Sliding(size, _) => {
                    let slide = match shape {
                        Shape::Sliding(_, slide) => slide,
                        _ => size,
                    };
                    let mut any = false;
                    for j in (t - size).div_euclid(slide) - 1..=t.div_euclid(slide) + 1 {
                        let (start, end) = (j * slide, j * slide + size);
                        if start <= t && t < end && !expired(end, w) {
                            members
                                .entry((vec![k.clone()], start, end))
                                .or_default()
                                .push(v.clone());
                            any = true;
                        }
                    }
                    any
                }
                Shape::Session(gap) => {
                    let list = sessions.entry(k.clone()).or_default();
                    let mut new = (t, t + gap, vec![v.clone()], false);
                    let touches =
                        |s: &OracleSession, n: &OracleSession| !s.3 && s.0 <= n.1 && n.0 <= s.1;
                    if !list.iter().any(|s| touches(s, &new)) && expired(new.1, w) {
                        false
                    } else {
                        // Merge until nothing live touches the new session.
                        while let Some(pos) = list.iter().position(|s| touches(s, &new)) {
                            let s = list.remove(pos);
                            new.0 = new.0.min(s.0);
                            new.1 = new.1.max(s.1);
                            new.2.extend(s.2);
                        }
                        list.push(new);
                        true
                    }
                }
            };
            if !accepted {
                late.push((vec![k, v], t));
            }
        }
    }
    for (k, list) in sessions {
        for (start, end, values, _) in list {
            members.insert((vec![k.clone()], start, end), values);
        }
    }
    let results = members
        .into_iter()
        .map(|(id, values)| (id, oracle_aggs(&values)))
        .collect();
    (results, late)
}

/// Folds `main` into the last result per (key, window), checking the revision protocol.
fn final_results(main: &[EmittedRow]) -> Results {
    let mut results: HashMap<ResultId, (i64, Vec<Value>)> = HashMap::new();
    let ms = |v: &Value| match v {
        Value::Timestamp(us) => us / 1000,
        other => panic!("not a timestamp: {other:?}"),
    };
    for (row, t) in main {
        let (start, end) = (ms(&row[1]), ms(&row[2]));
        assert_eq!(*t, end - 1, "a result's event time is end - 1");
        let id = (row[..1].to_vec(), start, end);
        let aggs = row[3..row.len() - 1].to_vec();
        match row.last().and_then(Value::as_i64).unwrap() {
            RETRACTED => {
                assert!(aggs.iter().all(Value::is_null));
                assert!(
                    results.remove(&id).is_some(),
                    "retracted {id:?} was not emitted"
                );
            }
            0 => assert!(
                results.insert(id.clone(), (0, aggs)).is_none(),
                "{id:?} fired twice"
            ),
            r => {
                let last = results.get_mut(&id).expect("a revision follows a result");
                assert_eq!(last.0 + 1, r, "revisions of {id:?} go up by one");
                *last = (r, aggs);
            }
        }
    }
    results
        .into_iter()
        .map(|(id, (_, aggs))| (id, aggs))
        .collect()
}

fn check_against_oracle(shape: Shape, lateness: i64, steps: &[Step]) {
    let spec = spec(shape.kind(), lateness as u64, all_aggs());
    let got = run(&spec, steps, None);
    let (expected, expected_late) = oracle(shape, lateness, steps);
    assert_eq!(got.late, expected_late);
    assert_eq!(got.late_count, expected_late.len() as u64);
    assert_eq!(final_results(&got.main), expected);
}

/// Rows with few keys (null among them) and nullable amounts, times drifting forward with
/// random out-of-orderness, in random batches, with watermarks trailing the latest time by
/// a random lag (monotone, so rows further behind than the lag arrive late), ending with
/// the end-of-time watermark.
fn arb_script() -> impl Strategy<Value = Vec<Step>> {
    let event = (
        0..4u8,
        prop::option::of(-5i64..5),
        0i64..8,
        0i64..30,
        0u8..10,
        0i64..15,
    );
    prop::collection::vec(event, 1..60).prop_map(|events| {
        let keys = [s("a"), s("b"), s("c"), Value::Null];
        let (mut steps, mut rows) = (Vec::new(), Vec::new());
        let (mut now, mut wm) = (0i64, None::<i64>);
        for (k, v, advance, jitter, action, lag) in events {
            now += advance;
            rows.push((
                keys[k as usize].clone(),
                v.map_or(Value::Null, Value::Int),
                now - jitter,
            ));
            if action < 5 {
                steps.push(Step::Data(std::mem::take(&mut rows)));
            }
            if action < 3 && wm.is_none_or(|w| now - lag > w) {
                wm = Some(now - lag);
                steps.push(Step::Watermark(now - lag));
            }
        }
        if !rows.is_empty() {
            steps.push(Step::Data(rows));
        }
        steps.push(Step::Watermark(END_OF_TIME));
        steps
    })
}

/// Runs `steps` on `former` instances (rows routed by key as the keyed shuffle does), and
/// after step `cut` on `now` instances restored from their snapshots; returns everything
/// emitted, sorted, and the counts summed over instances.
fn run_rescaled(
    spec: &WindowSpec,
    steps: &[Step],
    cut: usize,
    former: usize,
    now: usize,
) -> RunOutput {
    let fresh = || WindowOperator::new("w", spec.clone(), input()).unwrap();
    let hasher = key_hasher();
    let mut instances: Vec<Harness<WindowOperator>> =
        (0..former).map(|_| Harness::new(fresh(), 1)).collect();
    let (mut main, mut late) = (Vec::new(), Vec::new());
    for (n, step) in steps.iter().enumerate() {
        match step {
            Step::Data(rows) => {
                let count = instances.len();
                let mut parts: Vec<Batch> = (0..count).map(|_| Batch::new(input())).collect();
                for (user, amount, t) in rows {
                    let row = [user.clone(), amount.clone()];
                    parts[owner_of_row(&hasher, &row, &[0], count)].push_row(row, *t);
                }
                for (h, part) in instances.iter_mut().zip(parts) {
                    if !part.is_empty() {
                        h.data(0, part);
                    }
                }
            }
            Step::Watermark(t) => instances.iter_mut().for_each(|h| h.watermark_all(*t)),
        }
        for h in &mut instances {
            main.extend(h.take("main"));
            late.extend(h.take("late"));
        }
        if n == cut {
            let snapshots: Vec<_> = instances.iter_mut().map(Harness::barrier).collect();
            instances = (0..now)
                .map(|i| Harness::restore_rescaled(fresh(), i, now, &snapshots, 1))
                .collect();
        }
    }
    main.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    late.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    RunOutput {
        main,
        late,
        late_count: instances.iter().map(|h| h.operator().late_count()).sum(),
        fired_count: instances.iter().map(|h| h.operator().fired_count()).sum(),
    }
}

/// A row with its lateness reference.
type RefRow = (Value, Value, EventTime, Option<EventTime>);

/// Runs data steps (rows with lateness references) and watermarks on one instance, restored
/// into a fresh one after step `cut` (if any); returns what it emitted, sorted, and its
/// counts.
fn run_with_refs(
    spec: &WindowSpec,
    steps: &[(Vec<RefRow>, Option<EventTime>)],
    cut: Option<usize>,
) -> RunOutput {
    let fresh = || WindowOperator::new("w", spec.clone(), input()).unwrap();
    let mut h = Harness::new(fresh(), 1);
    let (mut main, mut late) = (Vec::new(), Vec::new());
    for (n, (rows, wm)) in steps.iter().enumerate() {
        if !rows.is_empty() {
            let mut b = Batch::new(input());
            for (k, (user, amount, t, reference)) in rows.iter().enumerate() {
                b.push_row([user.clone(), amount.clone()], *t);
                if let Some(r) = reference {
                    b.mark_behind(k, *r);
                }
            }
            h.data(0, b);
        }
        if let Some(w) = wm {
            h.watermark_all(*w);
        }
        main.extend(h.take("main"));
        late.extend(h.take("late"));
        if cut == Some(n) {
            let snapshot = h.barrier();
            h = Harness::restore(fresh(), &snapshot, 1);
        }
    }
    main.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    late.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    RunOutput {
        main,
        late,
        late_count: h.operator().late_count(),
        fired_count: h.operator().fired_count(),
    }
}

/// The script as a source would deliver it: a row behind the watermark before it carries
/// that watermark as its reference. Returns it as delivered, and with every such row
/// delivered first instead (as when its partition's rows reach the operator before the
/// others move the watermark): both are orders a busy or an idle machine can produce.
#[allow(clippy::type_complexity)]
fn two_deliveries(
    steps: &[Step],
) -> (
    Vec<(Vec<RefRow>, Option<EventTime>)>,
    Vec<(Vec<RefRow>, Option<EventTime>)>,
) {
    let mut wm: Option<EventTime> = None;
    let (mut as_read, mut early, mut behind) = (Vec::new(), Vec::new(), Vec::new());
    for step in steps {
        match step {
            Step::Watermark(t) => {
                wm = Some(*t);
                as_read.push((Vec::new(), Some(*t)));
                early.push((Vec::new(), Some(*t)));
            }
            Step::Data(rows) => {
                let rows: Vec<RefRow> = rows
                    .iter()
                    .map(|(k, v, t)| (k.clone(), v.clone(), *t, wm.filter(|w| t < w)))
                    .collect();
                let on_time: Vec<RefRow> = rows.iter().filter(|r| r.3.is_none()).cloned().collect();
                behind.extend(rows.iter().filter(|r| r.3.is_some()).cloned());
                as_read.push((rows, None));
                early.push((on_time, None));
            }
        }
    }
    early.insert(0, (behind, None));
    (as_read, early)
}

fn arb_shape() -> impl Strategy<Value = Shape> {
    prop_oneof![
        (1i64..25).prop_map(Shape::Tumbling),
        (1i64..25)
            .prop_flat_map(|size| (Just(size), 1..=size))
            .prop_map(|(size, slide)| Shape::Sliding(size, slide)),
        (1i64..15).prop_map(Shape::Session),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 300,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn tumbling_matches_oracle(size in 1i64..25, lateness in 0i64..20, steps in arb_script()) {
        check_against_oracle(Shape::Tumbling(size), lateness, &steps);
    }

    #[test]
    fn sliding_matches_oracle(
        (size, slide) in (1i64..25).prop_flat_map(|size| (Just(size), 1..=size)),
        lateness in 0i64..20,
        steps in arb_script(),
    ) {
        check_against_oracle(Shape::Sliding(size, slide), lateness, &steps);
    }

    #[test]
    fn sessions_match_oracle(gap in 1i64..15, lateness in 0i64..20, steps in arb_script()) {
        check_against_oracle(Shape::Session(gap), lateness, &steps);
    }

    /// Rows behind their partition's watermark reach the operator early or late: the same
    /// output, late rows and revisions included, for every kind of window; and the same
    /// when the early run is restored from a checkpoint at any step (rows kept aside in it).
    #[test]
    fn when_a_row_behind_arrives_changes_nothing(
        shape in arb_shape(),
        lateness in 0i64..20,
        steps in arb_script(),
        cut in any::<prop::sample::Index>(),
    ) {
        let spec = spec(shape.kind(), lateness as u64, all_aggs());
        let (as_read, early) = two_deliveries(&steps);
        let expected = run_with_refs(&spec, &as_read, None);
        prop_assert_eq!(&run_with_refs(&spec, &early, None), &expected);
        let cut = cut.index(early.len());
        prop_assert_eq!(run_with_refs(&spec, &early, Some(cut)), expected);
    }

    #[test]
    fn rescaling_anywhere_matches_uninterrupted(
        shape in arb_shape(),
        lateness in 0i64..20,
        steps in arb_script(),
        cut in any::<prop::sample::Index>(),
        former in 1usize..=4,
        now in 1usize..=4,
    ) {
        let spec = spec(shape.kind(), lateness as u64, all_aggs());
        let straight = run(&spec, &steps, None);
        let (mut main, mut late) = (straight.main, straight.late);
        main.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        late.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        let rescaled = run_rescaled(&spec, &steps, cut.index(steps.len()), former, now);
        prop_assert_eq!(rescaled.main, main);
        prop_assert_eq!(rescaled.late, late);
        prop_assert_eq!(rescaled.late_count, straight.late_count);
        prop_assert_eq!(rescaled.fired_count, straight.fired_count);
    }

    #[test]
    fn restore_anywhere_matches_uninterrupted(
        shape in arb_shape(),
        lateness in 0i64..20,
        steps in arb_script(),
        cut in any::<prop::sample::Index>(),
    ) {
        let spec = spec(shape.kind(), lateness as u64, all_aggs());
        let straight = run(&spec, &steps, None);
        prop_assert_eq!(run(&spec, &steps, Some(cut.index(steps.len()))), straight);
    }
}
