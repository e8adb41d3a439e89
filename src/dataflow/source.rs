//! The `Source` contract: where records enter a pipeline. See the contract in `dataflow`'s
//! header for the order of calls.

use crate::dataflow::port::PortSpec;
use crate::dataflow::position::SourcePosition;
use crate::error::RunError;
use crate::types::{Batch, Epoch, EventTime, SchemaRef};

/// What one `read` call produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadStatus {
    /// Records (or dead letters) were appended for `partition`; call again.
    Data { partition: usize },
    /// Nothing available before `retry_at_ms` (processing time); the caller may wait.
    Pending { retry_at_ms: i64 },
    /// Partition `partition` has ended (and others may go on).
    PartitionEnded { partition: usize },
    /// Every partition has ended.
    Finished,
    /// The set of partitions changed (a consumer group assigned or revoked some): the
    /// runtime calls `partitions` again and matches them by name. A new partition starts
    /// with no watermark (it does not move the source's watermark backwards); one no longer
    /// listed stops holding it. Partition indices in later statuses refer to the new list.
    PartitionsChanged,
}

/// Output buffers for one `read` call.
pub struct ReadBuffers {
    /// Port 0 (`main`).
    pub records: Batch,
    /// Port 1 (`dead_letter`).
    pub dead_letters: Batch,
    /// Ports 2.. (`Source::extra_ports`, e.g. one per table of a change stream).
    pub extra: Vec<Batch>,
    /// The partition promises no record with an event time below this any more (a CDC
    /// heartbeat): it moves the partition's watermark like a record with this time would.
    pub progress: Option<EventTime>,
    /// Partitions this call found with nothing to read: caught up with their input (the end
    /// of a followed file, no record from the broker, no change in the replication stream)
    /// or in a scheduled quiet period. Only a partition seen caught up for `idle_timeout`
    /// becomes idle; one that is slow, throttled or blocked on a full channel never does.
    pub caught_up: Vec<usize>,
    /// Partitions this call found with records ready that it did not return (a source
    /// returns one partition's records per call): they are not caught up any more, so an
    /// idle one holds the watermark again at once, before its records are read — otherwise
    /// the partitions read first would move the watermark past them.
    pub ready: Vec<usize>,
}

impl ReadBuffers {
    /// Empty buffers for `source`'s ports.
    pub fn for_source(source: &dyn Source) -> ReadBuffers {
        ReadBuffers::for_ports(source.schema(), source.extra_ports())
    }

    /// Empty buffers for a source of records with `schema` and these extra ports.
    pub fn for_ports(schema: SchemaRef, extra_ports: Vec<PortSpec>) -> ReadBuffers {
        ReadBuffers {
            records: Batch::new(schema),
            dead_letters: Batch::new(crate::dead_letter::schema()),
            extra: extra_ports
                .into_iter()
                .map(|p| Batch::new(p.schema))
                .collect(),
            progress: None,
            caught_up: Vec::new(),
            ready: Vec::new(),
        }
    }
}

/// A source instance reading a fixed set of partitions.
pub trait Source: Send {
    /// Schema of the records on the main port.
    fn schema(&self) -> SchemaRef;

    /// Names of the partitions this instance reads now, e.g. file paths or `topic/3`;
    /// unique within the source.
    fn partitions(&self) -> Vec<String>;

    /// Output ports after `main` and `dead_letter`, in order (ports 2..).
    fn extra_ports(&self) -> Vec<PortSpec> {
        Vec::new()
    }

    /// Which output ports have consumers (by port index), told once before the first read,
    /// so that a source can skip building what nobody reads.
    fn connect_ports(&mut self, consumed: &[bool]) {
        let _ = consumed;
    }

    /// Reads up to `max_records` records of one partition into `out`, at processing time
    /// `now_ms`. Event times are set on each record.
    fn read(
        &mut self,
        out: &mut ReadBuffers,
        max_records: usize,
        now_ms: i64,
    ) -> Result<ReadStatus, RunError>;

    /// Positions of every partition, as of the records returned so far, in the order of
    /// `partitions`.
    fn positions(&self) -> Vec<SourcePosition>;

    /// Rewinds to positions recorded by `positions` (partitions not listed start over; a
    /// position this source cannot read is an error, never a silent start over).
    fn seek(&mut self, positions: &[SourcePosition]) -> Result<(), RunError>;

    /// A barrier of `epoch` goes out after everything read so far, at `positions` (what the
    /// checkpoint will hold of this source): for a source whose upstream acknowledgement
    /// travels with another component (a consumer group's offsets in a sink's transaction).
    fn barrier(&mut self, epoch: Epoch, positions: &[SourcePosition]) {
        let _ = (epoch, positions);
    }

    /// The checkpoint of `epoch` is durable, and with it `positions`, what this source
    /// reported at that barrier: acknowledge them upstream (commit consumer-group offsets,
    /// confirm a replication slot's LSN). Called only after the checkpoint is durable, in
    /// epoch order, at most once per epoch; `epoch` is `FINAL_EPOCH` for the run's last one.
    /// Upstream never learns of a position before the state that covers it is safe.
    fn checkpoint_complete(
        &mut self,
        epoch: Epoch,
        positions: &[SourcePosition],
    ) -> Result<(), RunError> {
        let _ = (epoch, positions);
        Ok(())
    }

    /// A bootstrap run reads only the snapshots of change streams: a source that has one
    /// reads it (and nothing after it) and returns true; any other reads nothing (false).
    fn start_bootstrap(&mut self) -> bool {
        false
    }

    /// Whether a bootstrapping source has read and emitted its snapshot.
    fn bootstrap_done(&self) -> bool {
        true
    }

    /// Counters for `/status` (a consumer group's rebalances, say), under the instance's
    /// `stats`; published after partition changes and completed checkpoints.
    fn stats(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }

    /// Facts for `/status` by name (a consumer group's member id and members), published
    /// with `stats`.
    fn info(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }

    /// Whether the source waits for a checkpoint to complete, so soon that the next barrier
    /// should not wait for the interval (a consumer group's revoked partitions are handed
    /// over only once a checkpoint covers what was read of them). Asked after every read.
    fn wants_checkpoint(&self) -> bool {
        false
    }

    /// Conditions an operator should see in `/status` (a change stream whose configured
    /// tables receive nothing while other tables' changes arrive); usually none.
    fn warnings(&self) -> Vec<String> {
        Vec::new()
    }
}
