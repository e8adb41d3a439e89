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
    /// Since the last record: when the source first found the partition with nothing to
    /// read, and when it last did.
    quiet_since_ms: Option<i64>,
    quiet_confirmed_ms: i64,
    ended: bool,
}

impl Partition {
    fn new(max_out_of_orderness: Duration, now_ms: i64) -> Partition {
        Partition {
            generator: BoundedOutOfOrderness::new(max_out_of_orderness),
            last_activity_ms: now_ms,
            quiet_since_ms: None,
            quiet_confirmed_ms: now_ms,
            ended: false,
        }
    }

    /// Seen with nothing to read for at least `timeout`, between observations: time when
    /// nobody looked (a thread starved of CPU or blocked on a full channel) counts only if
    /// the partition was still caught up when the source looked again, which means nothing
    /// arrived meanwhile.
    fn quiet_for(&self, timeout_ms: i64) -> bool {
        self.quiet_since_ms
            .is_some_and(|since| self.quiet_confirmed_ms - since >= timeout_ms)
    }
}

/// The watermarks of all partitions one source instance reads, with idleness.
///
/// A partition becomes idle once the source has found it with nothing to read (caught up
/// with its input, or in a scheduled quiet period) for `idle_timeout` of processing time,
/// and active again with its next record; a finished partition (a file read to its end, not
/// followed) stops holding the watermark. Unlike Flink's `withIdleness`, which counts
/// processing time without a record, a partition that is merely slow — its thread starved of
/// CPU, blocked on a full channel, throttled to a rate — is never declared idle, so how busy
/// the machine is never decides what is late. Without an `idle_timeout` a quiet partition holds
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
                .map(|_| Partition::new(max_out_of_orderness, now_ms))
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

    /// Records event time `t` read from partition `p`, and returns the partition's watermark
    /// before it if `t` is behind that watermark: the row's lateness reference (see
    /// `types::Batch`). It depends only on the partition's records, never on timing.
    pub fn on_event_behind(&mut self, p: usize, t: EventTime) -> Option<EventTime> {
        let generator = &mut self.partitions[p].generator;
        let before = generator.current().filter(|&w| t < w);
        generator.on_event(t);
        before
    }

    /// Marks partition `p` as having received records at `now_ms` (call once per batch).
    pub fn on_activity(&mut self, p: usize, now_ms: i64) {
        let part = &mut self.partitions[p];
        part.last_activity_ms = now_ms;
        part.quiet_since_ms = None;
    }

    /// The source found partition `p` with nothing to read at `now_ms`.
    pub fn on_caught_up(&mut self, p: usize, now_ms: i64) {
        let part = &mut self.partitions[p];
        part.quiet_since_ms.get_or_insert(now_ms);
        part.quiet_confirmed_ms = now_ms;
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
            } else if self.idle_timeout_ms.is_some_and(|t| p.quiet_for(t)) {
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
                None => Partition::new(self.max_out_of_orderness, now_ms),
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

    /// Partition `p` continues from highest event time `t` (a restored checkpoint's).
    pub fn restore_partition(&mut self, p: usize, t: EventTime) {
        if let Some(part) = self.partitions.get_mut(p) {
            part.generator.max_seen = Some(part.generator.max_seen.map_or(t, |m| m.max(t)));
        }
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
        // Partition 1 is seen with nothing to read from 10 s to 60 s.
        w.on_caught_up(1, 10_000);
        w.on_caught_up(1, 60_000);
        w.on_event(0, 60_000);
        w.on_activity(0, 60_000);
        assert_eq!(w.poll(60_000), Some(Watermark::EventTime(59_999)));
        assert!(w.partition_is_idle(1));
        // Both quiet: the instance is idle.
        w.on_caught_up(0, 100_000);
        w.on_caught_up(0, 200_000);
        assert_eq!(w.poll(200_000), Some(Watermark::Idle));
        // Activity brings it back with the watermark it had.
        w.on_event(0, 61_000);
        w.on_activity(0, 200_001);
        assert_eq!(w.poll(200_001), Some(Watermark::EventTime(60_999)));
    }

    #[test]
    fn a_slow_partition_is_never_idle_only_a_caught_up_one() {
        let mut w = PartitionWatermarks::new(2, Duration::ZERO, Some(30 * S), 0);
        w.on_event(0, 1_000);
        w.on_event(1, 1_000);
        w.poll(0);
        // Partition 1 had records but its thread was starved (or blocked) for 10 minutes:
        // nobody saw it caught up, so it still holds the watermark.
        w.on_event(0, 600_000);
        w.on_activity(0, 600_000);
        assert_eq!(w.poll(600_000), None);
        assert!(!w.partition_is_idle(1));
        // Seen caught up once, then the thread stalls: one observation is no span.
        w.on_caught_up(1, 600_000);
        assert_eq!(w.poll(1_200_000), None);
        // Seen caught up again later: nothing arrived meanwhile, so it was quiet all along.
        w.on_caught_up(1, 1_200_000);
        assert_eq!(w.poll(1_200_000), Some(Watermark::EventTime(599_999)));
        // A record ends the quiet span: the next idleness needs a new one.
        w.on_event(1, 700_000);
        w.on_activity(1, 1_200_001);
        w.on_caught_up(1, 1_200_002);
        w.poll(1_200_002);
        assert!(!w.partition_is_idle(1));
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
