//! Watermark generators for sources: bounded out-of-orderness per partition (per file, split
//! or Kafka partition), wrapped by idleness (`idle_timeout`, measured on the injected clock),
//! merged across a source instance's partitions with `InputWatermarks`.

use std::time::Duration;

use crate::time::watermark::{END_OF_TIME, InputWatermarks, Watermark};
use crate::types::EventTime;

/// Watermark = highest event time seen − `max_out_of_orderness` − 1 ms.
#[derive(Clone, Debug)]
pub struct BoundedOutOfOrderness {
    max_out_of_orderness_ms: i64,
    max_seen: Option<EventTime>,
}

impl BoundedOutOfOrderness {
    pub fn new(max_out_of_orderness: Duration) -> BoundedOutOfOrderness {
        BoundedOutOfOrderness {
            max_out_of_orderness_ms: max_out_of_orderness.as_millis() as i64,
            max_seen: None,
        }
    }

    pub fn on_event(&mut self, t: EventTime) {
        self.max_seen = Some(self.max_seen.map_or(t, |m| m.max(t)));
    }

    pub fn current(&self) -> Option<EventTime> {
        self.max_seen.map(|m| {
            m.saturating_sub(self.max_out_of_orderness_ms)
                .saturating_sub(1)
        })
    }
}

#[derive(Clone, Debug)]
struct Partition {
    generator: BoundedOutOfOrderness,
    last_activity_ms: i64,
    ended: bool,
}

/// The watermarks of all partitions one source instance reads, with idleness.
///
/// A partition becomes idle after `idle_timeout` of processing time without a record (and
/// active again with its next record); a finished partition (a file read to its end, not
/// followed) stops holding the watermark. Without an `idle_timeout` a quiet partition holds
/// the watermark where it is, which is what the stall alert exists to report.
#[derive(Clone, Debug)]
pub struct PartitionWatermarks {
    partitions: Vec<Partition>,
    idle_timeout_ms: Option<i64>,
    max_out_of_orderness: Duration,
    merged: InputWatermarks,
    emitted: Option<Watermark>,
}

impl PartitionWatermarks {
    pub fn new(
        partitions: usize,
        max_out_of_orderness: Duration,
        idle_timeout: Option<Duration>,
        now_ms: i64,
    ) -> PartitionWatermarks {
        PartitionWatermarks {
            partitions: (0..partitions)
                .map(|_| Partition {
                    generator: BoundedOutOfOrderness::new(max_out_of_orderness),
                    last_activity_ms: now_ms,
                    ended: false,
                })
                .collect(),
            idle_timeout_ms: idle_timeout.map(|d| d.as_millis() as i64),
            max_out_of_orderness,
            merged: InputWatermarks::new(partitions, now_ms),
            emitted: None,
        }
    }

    pub fn len(&self) -> usize {
        self.partitions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.partitions.is_empty()
    }

    /// Records one event of partition `p` (cheap: call it per record).
    #[inline]
    pub fn on_event(&mut self, p: usize, t: EventTime) {
        self.partitions[p].generator.on_event(t);
    }

    /// Marks partition `p` as having received records at `now_ms` (call once per batch).
    pub fn on_activity(&mut self, p: usize, now_ms: i64) {
        self.partitions[p].last_activity_ms = now_ms;
    }

    /// Partition `p` has no more records, ever: it stops holding the watermark.
    pub fn on_partition_end(&mut self, p: usize) {
        self.partitions[p].ended = true;
    }

    pub fn partition_watermark(&self, p: usize) -> Option<EventTime> {
        self.partitions[p].generator.current()
    }

    pub fn partition_is_idle(&self, p: usize) -> bool {
        self.merged.input_is_idle(p)
    }

    pub fn last_activity_ms(&self, p: usize) -> i64 {
        self.partitions[p].last_activity_ms
    }

    /// The partition holding this instance's watermark, if any is active.
    pub fn holder(&self) -> Option<usize> {
        self.merged.holder()
    }

    pub fn advanced_at_ms(&self) -> i64 {
        self.merged.advanced_at_ms()
    }

    /// Re-evaluates idleness at `now_ms` and returns the instance's watermark if it changed
    /// since the last call.
    pub fn poll(&mut self, now_ms: i64) -> Option<Watermark> {
        for (i, p) in self.partitions.iter().enumerate() {
            let wm = if p.ended {
                Watermark::EventTime(END_OF_TIME)
            } else if self
                .idle_timeout_ms
                .is_some_and(|t| now_ms - p.last_activity_ms >= t)
            {
                Watermark::Idle
            } else {
                match p.generator.current() {
                    Some(t) => Watermark::EventTime(t),
                    None => continue,
                }
            };
            self.merged.update(i, wm, now_ms);
        }
        let now = if self.merged.is_idle() {
            Some(Watermark::Idle)
        } else {
            self.merged.current().map(Watermark::EventTime)
        };
        if now != self.emitted {
            self.emitted = now;
            now
        } else {
            None
        }
    }

    /// Replaces the partitions (a consumer group's assignment changed): new partition `i`
    /// takes the state of old partition `keep[i]`, or starts with no watermark and its
    /// idleness clock at `now_ms`. Partitions not kept stop holding the watermark, and the
    /// instance's watermark never goes backwards.
    pub fn remap(&mut self, keep: &[Option<usize>], now_ms: i64) {
        self.partitions = keep
            .iter()
            .map(|k| match k.and_then(|i| self.partitions.get(i)) {
                Some(p) => p.clone(),
                None => Partition {
                    generator: BoundedOutOfOrderness::new(self.max_out_of_orderness),
                    last_activity_ms: now_ms,
                    ended: false,
                },
            })
            .collect();
        self.merged.remap(keep, now_ms);
    }

    /// The highest event time seen per partition: what a checkpoint keeps of the
    /// generators, so that a restored run computes the same watermarks.
    pub fn max_event_times(&self) -> Vec<Option<EventTime>> {
        self.partitions
            .iter()
            .map(|p| p.generator.max_seen)
            .collect()
    }

    /// Restores what `max_event_times` returned (partitions beyond it keep theirs).
    pub fn restore_max_event_times(&mut self, times: &[Option<EventTime>]) {
        for (p, t) in self.partitions.iter_mut().zip(times) {
            p.generator.max_seen = *t;
        }
    }

    /// The watermark last returned by `poll`.
    pub fn emitted(&self) -> Option<Watermark> {
        self.emitted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn restored_generators_give_the_same_watermark() {
        let mut w = PartitionWatermarks::new(2, 2 * S, None, 0);
        w.on_event(0, 10_000);
        w.on_event(1, 7_000);
        let before = w.poll(0);
        let mut r = PartitionWatermarks::new(2, 2 * S, None, 0);
        r.restore_max_event_times(&w.max_event_times());
        assert_eq!(r.poll(0), before);
        assert_eq!(before, Some(Watermark::EventTime(4_999)));
    }

    #[test]
    fn bounded_out_of_orderness_lags_by_the_bound() {
        let mut g = BoundedOutOfOrderness::new(5 * S);
        assert_eq!(g.current(), None);
        g.on_event(10_000);
        g.on_event(8_000);
        assert_eq!(g.current(), Some(4_999));
    }

    #[test]
    fn quiet_partition_holds_without_idle_timeout() {
        let mut w = PartitionWatermarks::new(2, Duration::ZERO, None, 0);
        w.on_event(0, 1_000);
        w.on_event(1, 1_000);
        assert_eq!(w.poll(0), Some(Watermark::EventTime(999)));
        w.on_event(0, 60_000);
        w.on_activity(0, 60_000);
        assert_eq!(w.poll(60_000), None, "partition 1 holds the watermark");
        assert_eq!(w.holder(), Some(1));
    }

    #[test]
    fn quiet_partition_released_by_idle_timeout() {
        let mut w = PartitionWatermarks::new(2, Duration::ZERO, Some(30 * S), 0);
        w.on_event(0, 1_000);
        w.on_event(1, 1_000);
        w.poll(0);
        w.on_event(0, 60_000);
        w.on_activity(0, 60_000);
        assert_eq!(w.poll(60_000), Some(Watermark::EventTime(59_999)));
        assert!(w.partition_is_idle(1));
        // Both quiet: the instance is idle.
        assert_eq!(w.poll(200_000), Some(Watermark::Idle));
        // Activity brings it back with the watermark it had.
        w.on_event(0, 61_000);
        w.on_activity(0, 200_001);
        assert_eq!(w.poll(200_001), Some(Watermark::EventTime(60_999)));
    }

    #[test]
    fn a_new_partition_holds_nothing_back_and_a_revoked_one_releases() {
        let mut w = PartitionWatermarks::new(2, Duration::ZERO, Some(30 * S), 0);
        w.on_event(0, 10_000);
        w.on_event(1, 5_000);
        assert_eq!(w.poll(0), Some(Watermark::EventTime(4_999)));
        // Partition 1 revoked, partition 2 assigned (no records yet).
        w.remap(&[Some(0), None], 1_000);
        assert_eq!(
            w.poll(1_000),
            None,
            "never backwards, and the new one has told nothing"
        );
        assert_eq!(w.holder(), Some(1));
        w.on_event(1, 20_000);
        w.on_activity(1, 1_000);
        assert_eq!(w.poll(1_000), Some(Watermark::EventTime(9_999)));
        // The new partition starts below the watermark: the watermark stays.
        let mut w2 = PartitionWatermarks::new(1, Duration::ZERO, None, 0);
        w2.on_event(0, 10_000);
        w2.poll(0);
        w2.remap(&[Some(0), None], 0);
        w2.on_event(1, 1_000);
        assert_eq!(w2.poll(0), None);
        assert_eq!(w2.emitted(), Some(Watermark::EventTime(9_999)));
    }

    #[test]
    fn ended_partition_releases() {
        let mut w = PartitionWatermarks::new(2, Duration::ZERO, None, 0);
        w.on_event(0, 5_000);
        w.on_partition_end(1);
        assert_eq!(w.poll(0), Some(Watermark::EventTime(4_999)));
    }
}
