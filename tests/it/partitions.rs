//! Partitions that come and go while a source runs (a consumer group's assignment and
//! revocation), driven through the runtime's `SourceDriver` step by step: a new partition
//! starts with no watermark and does not move the source's watermark backwards, a revoked
//! one stops holding it back, and every partition held at a barrier is in that checkpoint
//! and is acknowledged when the checkpoint is durable.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use watershed::dataflow::{
    ConnectorPosition, Message, Position, ReadBuffers, ReadStatus, Source, SourcePosition,
};
use watershed::error::RunError;
use watershed::runtime::WatermarkSpec;
use watershed::runtime::task::{BarrierAck, Emit, SourceDriver};
use watershed::status::{InstanceStatus, Role};
use watershed::time::Watermark;
use watershed::types::{DataType, Field, Schema, SchemaRef, Value};

#[derive(serde::Serialize, serde::Deserialize)]
struct Offset {
    next: u64,
}

impl ConnectorPosition for Offset {
    const KIND: &'static str = "test-group";
    const VERSION: u32 = 1;
}

/// A scripted source: each step either reassigns partitions or gives one record of a
/// partition at an event time.
enum Step {
    Assign(Vec<&'static str>),
    Record(&'static str, i64),
}

/// Epochs acknowledged upstream, with the partitions of each.
type Acknowledged = Arc<Mutex<Vec<(u64, Vec<String>)>>>;

struct Scripted {
    partitions: Vec<&'static str>,
    next: Vec<u64>,
    script: std::vec::IntoIter<Step>,
    acknowledged: Acknowledged,
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("p", DataType::String)]))
}

impl Source for Scripted {
    fn schema(&self) -> SchemaRef {
        schema()
    }
    fn partitions(&self) -> Vec<String> {
        self.partitions.iter().map(|p| p.to_string()).collect()
    }
    fn read(&mut self, out: &mut ReadBuffers, _: usize, _: i64) -> Result<ReadStatus, RunError> {
        match self.script.next() {
            None => Ok(ReadStatus::Finished),
            Some(Step::Assign(ps)) => {
                self.next = ps
                    .iter()
                    .map(|p| {
                        self.partitions
                            .iter()
                            .position(|o| o == p)
                            .map_or(0, |i| self.next[i])
                    })
                    .collect();
                self.partitions = ps;
                Ok(ReadStatus::PartitionsChanged)
            }
            Some(Step::Record(p, t)) => {
                let i = self.partitions.iter().position(|x| *x == p).unwrap();
                self.next[i] += 1;
                out.records.push_row([Value::from(p)], t);
                Ok(ReadStatus::Data { partition: i })
            }
        }
    }
    fn positions(&self) -> Vec<SourcePosition> {
        self.partitions
            .iter()
            .zip(&self.next)
            .map(|(p, n)| SourcePosition {
                source: "s".into(),
                partition: p.to_string(),
                position: Position::of(&Offset { next: *n }),
            })
            .collect()
    }
    fn seek(&mut self, _: &[SourcePosition]) -> Result<(), RunError> {
        Ok(())
    }
    fn checkpoint_complete(
        &mut self,
        epoch: u64,
        positions: &[SourcePosition],
    ) -> Result<(), RunError> {
        self.acknowledged.lock().unwrap().push((
            epoch,
            positions.iter().map(|p| p.partition.clone()).collect(),
        ));
        Ok(())
    }
}

#[test]
fn partitions_come_and_go_without_moving_the_watermark_back() {
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let source = Scripted {
        partitions: vec!["t/0", "t/1"],
        next: vec![0, 0],
        script: vec![
            Step::Record("t/0", 10_000),
            Step::Record("t/1", 5_000),
            // t/1 revoked, t/2 assigned: t/2 has told nothing yet.
            Step::Assign(vec!["t/0", "t/2"]),
            Step::Record("t/0", 20_000),
            // t/2 starts far behind: the watermark does not go back.
            Step::Record("t/2", 1_000),
            Step::Record("t/2", 30_000),
        ]
        .into_iter(),
        acknowledged: acknowledged.clone(),
    };
    let status = Arc::new(InstanceStatus::new(
        "s",
        0,
        Role::Source,
        source.partitions(),
        &["main".into(), "dead_letter".into()],
        0,
    ));
    let spec = WatermarkSpec {
        max_ahead: None,
        max_out_of_orderness: Duration::ZERO,
        idle_timeout: None,
        expected_interval: None,
    };
    let mut driver = SourceDriver::new(Box::new(source), &spec, 10, status.clone(), 0);
    let mut watermarks = Vec::new();
    let mut emit = |e: Emit| {
        if let Emit::Control(Message::Watermark(Watermark::EventTime(t))) = e {
            watermarks.push(t);
        }
        Ok(())
    };
    for _ in 0..3 {
        driver.step(0, &mut emit).unwrap();
    }
    // Both partitions reported: min(10 s, 5 s) - 1 ms.
    let BarrierAck::Source { checkpoint, .. } = driver.barrier(1, &mut emit).unwrap() else {
        panic!("a source acknowledges as a source");
    };
    assert_eq!(checkpoint.partitions, vec!["t/0", "t/2"]);
    driver.checkpoint_complete(1).unwrap();
    while driver.step(0, &mut emit).unwrap() != watershed::runtime::task::SourceStep::Finished {}
    assert_eq!(watermarks.first(), Some(&4_999));
    assert!(
        watermarks.windows(2).all(|w| w[0] <= w[1]),
        "never backwards: {watermarks:?}"
    );
    // While t/2 had told nothing it held the watermark at 4,999; once it did, the revoked
    // t/1 no longer counted: min(20 s, 1 s) stays below, then min(20 s, 30 s).
    assert!(watermarks.contains(&19_999), "{watermarks:?}");
    assert!(
        !watermarks.iter().any(|&w| w > 4_999 && w < 19_999),
        "{watermarks:?}"
    );
    let report = status.snapshot();
    let labels: Vec<&str> = report.partitions.iter().map(|p| p.label.as_str()).collect();
    assert_eq!(labels, ["t/0", "t/2"]);
    assert_eq!(
        acknowledged.lock().unwrap().as_slice(),
        [(1, vec!["t/0".to_string(), "t/2".to_string()])]
    );
}

/// Restored from a checkpoint before the source lists one of its partitions (a topic found
/// later by its prefix, a late assignment): once listed, the partition continues from its
/// highest event time in the checkpoint, instead of holding the watermark back as a
/// partition that has told nothing (its records before the checkpoint will not come again).
#[test]
fn a_partition_listed_after_the_restore_takes_up_its_checkpointed_time() {
    let source = Scripted {
        partitions: vec!["t/0"],
        next: vec![0],
        script: vec![
            Step::Assign(vec!["t/0", "hb/0"]),
            Step::Record("t/0", 60_000),
        ]
        .into_iter(),
        acknowledged: Arc::default(),
    };
    let status = Arc::new(InstanceStatus::new(
        "s",
        0,
        Role::Source,
        source.partitions(),
        &["main".into(), "dead_letter".into()],
        0,
    ));
    let spec = WatermarkSpec {
        max_ahead: None,
        max_out_of_orderness: Duration::ZERO,
        idle_timeout: None,
        expected_interval: None,
    };
    let mut driver = SourceDriver::new(Box::new(source), &spec, 10, status, 0);
    driver
        .restore(&watershed::checkpoint::SourceCheckpoint {
            positions: Vec::new(),
            max_event_times: vec![Some(10_000), Some(50_000)],
            partitions: vec!["t/0".into(), "hb/0".into()],
        })
        .unwrap();
    let mut watermarks = Vec::new();
    let mut emit = |e: Emit| {
        if let Emit::Control(Message::Watermark(Watermark::EventTime(t))) = e {
            watermarks.push(t);
        }
        Ok(())
    };
    while driver.step(0, &mut emit).unwrap() != watershed::runtime::task::SourceStep::Finished {}
    assert!(
        watermarks.contains(&49_999),
        "hb/0 continues from 50 s: {watermarks:?}"
    );
}
