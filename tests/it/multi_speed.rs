//! The multi-speed stall, reproduced deterministically: a fast source and a source that goes
//! quiet for two minutes feed one windowed operator. All time is simulated with a manual
//! clock; the runtime's own drivers (source watermarking with idleness, the input gate, the
//! window operator) and alert rules are used, without threads or sleeping.

use std::time::Duration;

use watershed::alerts::{AlertEvaluator, AlertKind, AlertRules};
use watershed::dataflow::Message;
use watershed::dataflow::Operator;
use watershed::dataflow::Source;
use watershed::operators::window::{
    AggregateFn, AggregateSpec, WindowKind, WindowOperator, WindowSpec,
};
use watershed::runtime::plan::WatermarkSpec;
use watershed::runtime::task::{BarrierAck, Emit, OperatorDriver, SourceDriver, SourceStep};
use watershed::sources::generator::{
    GeneratorSource, GeneratorSpec, QuietPeriod, observation_schema,
};
use watershed::status::{InstanceStatus, Role, SourceExpectations, StatusRegistry, StatusReport};
use watershed::time::{Clock, ManualClock};
use watershed::types::Value;

const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
const STEP_MS: i64 = 100;

struct Outcome {
    /// (window_end, count) as emitted, in order, with the simulated time of emission.
    fired: Vec<(i64, i64, i64)>,
    alerts: Vec<(i64, AlertKind, String, String)>,
    /// The status document at the end.
    report: StatusReport,
}

fn source(
    name: &str,
    spec: GeneratorSpec,
    idle_timeout: Option<Duration>,
    registry: &StatusRegistry,
) -> SourceDriver {
    let g = GeneratorSource::new(name, spec, 0, 1);
    let status = registry.register(InstanceStatus::new(
        name,
        0,
        Role::Source,
        g.partitions(),
        &["main".into(), "dead_letter".into()],
        T0,
    ));
    registry.expect_source(SourceExpectations {
        source: name.into(),
        expected_interval_ms: Some(60_000),
        idle_timeout_ms: idle_timeout.map(|d| d.as_millis() as i64),
    });
    SourceDriver::new(
        Box::new(g),
        &WatermarkSpec {
            max_ahead: None,
            max_out_of_orderness: Duration::from_secs(1),
            idle_timeout,
            expected_interval: Some(Duration::from_secs(60)),
        },
        256,
        status,
        T0,
    )
}

/// Runs `duration` of simulated time; the quiet source has `quiet_idle_timeout`.
fn simulate(quiet_idle_timeout: Option<Duration>, duration: Duration) -> Outcome {
    let clock = ManualClock::new(T0);
    let registry = StatusRegistry::new("multi-speed");
    let fast_spec = GeneratorSpec {
        rate: Some(20.0),
        start_ms: Some(T0),
        hosts: 10,
        seed: 1,
        ..GeneratorSpec::default()
    };
    let quiet_spec = GeneratorSpec {
        rate: Some(1.0),
        start_ms: Some(T0),
        hosts: 3,
        seed: 2,
        quiet: vec![QuietPeriod {
            at: Duration::from_secs(10),
            duration: Duration::from_secs(120),
        }],
        ..GeneratorSpec::default()
    };
    let mut sources = [
        source("fast", fast_spec, Some(Duration::from_secs(30)), &registry),
        source("quiet", quiet_spec, quiet_idle_timeout, &registry),
    ];
    let spec = WindowSpec {
        key: vec![],
        kind: WindowKind::Tumbling {
            size: Duration::from_secs(30),
        },
        allowed_lateness: Duration::ZERO,
        aggregates: vec![AggregateSpec {
            name: "events".into(),
            function: AggregateFn::Count,
            field: None,
        }],
    };
    let op = WindowOperator::new("per_30s", spec, observation_schema()).unwrap();
    let ports: Vec<String> = op.ports().iter().map(|p| p.name.clone()).collect();
    let status = registry.register(InstanceStatus::new(
        "per_30s",
        0,
        Role::Operator,
        vec!["fast#0".into(), "quiet#0".into()],
        &ports,
        T0,
    ));
    let mut window = OperatorDriver::new(Box::new(op), vec![0, 1], status, T0);
    let mut evaluator = AlertEvaluator::new(AlertRules {
        watermark_lag_ms: None,
        watermark_stall_ms: Some(60_000),
        enrichment_gate_ms: None,
        checkpoint_age_ms: None,
        partition_unowned_ms: None,
    });
    let mut out = Outcome {
        fired: Vec::new(),
        alerts: Vec::new(),
        report: registry.snapshot(T0),
    };

    let end = T0 + duration.as_millis() as i64;
    let mut now = T0;
    while now <= end {
        clock.set(now);
        for (slot, src) in sources.iter_mut().enumerate() {
            let mut pending: Vec<Message> = Vec::new();
            loop {
                let mut emit = |e: Emit| {
                    match e {
                        Emit::Port(0, b) => pending.push(Message::Data(b)),
                        Emit::Port(_, _) => {}
                        Emit::Control(m) => pending.push(m),
                    }
                    Ok(())
                };
                match src.step(clock.now_ms(), &mut emit).unwrap() {
                    SourceStep::Continue => continue,
                    SourceStep::WaitUntil(_) | SourceStep::Finished => break,
                }
            }
            for msg in pending {
                let mut emit = |e: Emit| {
                    if let Emit::Port(0, b) = e {
                        for (row, _) in b.rows() {
                            let end_us = match row[1] {
                                Value::Timestamp(t) => t,
                                _ => panic!("window_end"),
                            };
                            let count = row[2].as_i64().unwrap();
                            out.fired.push((now, end_us / 1000, count));
                        }
                    }
                    Ok(())
                };
                let mut ack = |_: BarrierAck| {};
                window
                    .on_message(slot, msg, now, &mut emit, &mut ack)
                    .unwrap();
            }
        }
        if (now - T0) % 1000 == 0 {
            for ev in evaluator.evaluate(&registry.snapshot(now)) {
                if ev.firing {
                    out.alerts.push((now, ev.kind, ev.subject, ev.message));
                }
            }
        }
        now += STEP_MS;
    }
    out.report = registry.snapshot(end);
    out
}

fn fired_by(out: &Outcome, t: i64) -> Vec<i64> {
    out.fired
        .iter()
        .filter(|(at, _, _)| *at <= t)
        .map(|(_, end, _)| *end)
        .collect()
}

#[test]
fn quiet_source_without_idle_timeout_stalls_windows_and_is_alerted() {
    let out = simulate(None, Duration::from_secs(200));
    // The quiet source's watermark froze at ~9 s: no window fires during its silence.
    assert!(
        fired_by(&out, T0 + 129_000).is_empty(),
        "windows fired during the stall: {:?}",
        out.fired
    );
    // The stall is reported, naming the source partition that holds the watermark.
    let stall = out
        .alerts
        .iter()
        .find(|a| a.1 == AlertKind::WatermarkStall)
        .expect("a watermark_stall alert");
    assert!(stall.0 <= T0 + 75_000, "alerted late, at {}", stall.0 - T0);
    assert!(
        stall.3.contains("source `quiet` partition `quiet-0`"),
        "{}",
        stall.3
    );
    assert!(stall.3.contains("no idle_timeout"), "{}", stall.3);
    assert!(
        out.alerts
            .iter()
            .any(|a| a.1 == AlertKind::SourceSilent && a.2 == "quiet/quiet-0")
    );
    // When the source speaks again, the backlog of windows fires at once.
    let after = fired_by(&out, T0 + 132_000);
    assert!(after.contains(&(T0 + 90_000)), "{after:?}");
}

#[test]
fn idle_timeout_keeps_windows_firing_while_a_source_is_quiet() {
    let out = simulate(Some(Duration::from_secs(30)), Duration::from_secs(200));
    // The quiet source turns idle 30 s into its silence (at ~40 s); windows then follow the
    // fast source alone.
    let by_100s = fired_by(&out, T0 + 100_000);
    assert_eq!(
        by_100s,
        vec![T0 + 30_000, T0 + 60_000, T0 + 90_000],
        "{:?}",
        out.fired
    );
    assert!(
        out.alerts.iter().all(|a| a.1 != AlertKind::WatermarkStall),
        "{:?}",
        out.alerts
    );
}

#[test]
fn late_event_after_idle_source_is_not_lost() {
    // Both runs see the same events; once the quiet source resumes (with current event
    // times), nothing it sends is late, so both runs agree on every window's count.
    let stalled = simulate(None, Duration::from_secs(200));
    let flowing = simulate(Some(Duration::from_secs(30)), Duration::from_secs(200));
    let counts = |o: &Outcome| -> Vec<(i64, i64)> {
        let mut v: Vec<(i64, i64)> = o.fired.iter().map(|(_, e, c)| (*e, *c)).collect();
        v.sort();
        v
    };
    assert_eq!(counts(&stalled), counts(&flowing));
    let total: i64 = counts(&flowing).iter().map(|(_, c)| c).sum();
    assert!(total > 3000, "{total}");
}

#[test]
fn explain_names_the_partition_holding_the_watermark() {
    let out = simulate(None, Duration::from_secs(90));
    assert!(out.fired.is_empty());
    let text = watershed::cli::explain::render(&out.report);
    assert!(
        text.contains("held by quiet#0 -> quiet-0 (source `quiet` partition `quiet-0`: last record 1m 21s ago, no idle_timeout"),
        "{text}"
    );
}
