//! A sink task. `SinkDriver` takes each message through the input gate (barrier alignment)
//! and writes batches to the sink; at an aligned barrier the sink pre-commits, at the end of
//! its input it pre-commits for the run's last checkpoint (`FINAL_EPOCH`). `SinkTask` is its
//! thread: it recovers the sink, then feeds it its inbound channel and commits each epoch
//! when told the checkpoint is durable (`CheckpointDone`); once its input has ended it only
//! waits for the last commit, then finishes the sink. Rows written wait at most
//! `FLUSH_INTERVAL` (after the next message, or when the input pauses that long) before the
//! sink is asked to show them. `Discard` is the sink of a bootstrap.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crossbeam_channel::{Receiver, never, select};

use super::{BarrierAck, Control, FINAL_EPOCH, TaskLink};
use crate::dataflow::Message;
use crate::dataflow::{FLUSH_INTERVAL, Guarantee, Sink};
use crate::error::RunError;
use crate::runtime::gate::{GateEvent, InputGate};
use crate::runtime::route::Envelope;
use crate::status::InstanceStatus;
use crate::types::Epoch;

/// Gate → sink.
pub struct SinkDriver {
    sink: Box<dyn Sink>,
    gate: InputGate,
    status: Arc<InstanceStatus>,
    events: Vec<GateEvent>,
    /// When the oldest row written since the sink last flushed or pre-committed was written
    /// (processing time); `None`: nothing waits.
    unflushed_since: Option<i64>,
}

impl SinkDriver {
    pub fn new(
        sink: Box<dyn Sink>,
        slot_input: Vec<usize>,
        status: Arc<InstanceStatus>,
        now_ms: i64,
    ) -> SinkDriver {
        SinkDriver {
            sink,
            gate: InputGate::new(slot_input, now_ms),
            status,
            events: Vec::new(),
            unflushed_since: None,
        }
    }

    /// Flushes the sink once written rows have waited `FLUSH_INTERVAL`, so that a sink that
    /// can show them before a commit does not hold them until the next barrier. Called after
    /// each message and when the input pauses.
    pub fn flush_due(&mut self, now_ms: i64) -> Result<(), RunError> {
        match self.unflushed_since {
            Some(since) if now_ms - since >= FLUSH_INTERVAL.as_millis() as i64 => {
                self.flush(now_ms)
            }
            _ => Ok(()),
        }
    }

    /// Flushes the sink now if written rows wait: its input has nothing more queued, so
    /// there is nothing to batch them with, and waiting would only add latency.
    pub fn flush_idle(&mut self, now_ms: i64) -> Result<(), RunError> {
        match self.unflushed_since {
            Some(_) => self.flush(now_ms),
            None => Ok(()),
        }
    }

    /// Asks the sink to show what it holds; one that still holds rows back (batching them)
    /// is asked again after `FLUSH_INTERVAL`.
    fn flush(&mut self, now_ms: i64) -> Result<(), RunError> {
        self.unflushed_since = None;
        self.sink.flush()?;
        if self.sink.holds_rows() {
            self.unflushed_since = Some(now_ms);
        }
        Ok(())
    }

    /// Every input has ended (its final pre-commit is acknowledged; `commit(FINAL_EPOCH)`
    /// then `finish` end it).
    pub fn is_finished(&self) -> bool {
        self.gate.is_finished()
    }

    /// Restarting from a checkpoint (`state`: the sink's pre-commit in it; `None`: from the
    /// beginning).
    pub fn recover(&mut self, state: Option<&[u8]>) -> Result<(), RunError> {
        self.sink.recover(state)
    }

    /// Checkpoint `epoch` is durable: its output becomes visible.
    pub fn commit(&mut self, epoch: Epoch) -> Result<(), RunError> {
        self.sink.commit(epoch)
    }

    /// The final commit is done: close.
    pub fn finish(&mut self) -> Result<(), RunError> {
        self.status.set_finished();
        self.sink.finish()
    }

    pub fn on_message(
        &mut self,
        slot: usize,
        msg: Message,
        now_ms: i64,
        ack: &mut impl FnMut(BarrierAck),
    ) -> Result<(), RunError> {
        let control = !matches!(msg, Message::Data(_));
        let mut events = std::mem::take(&mut self.events);
        self.gate.accept(slot, msg, now_ms, &mut |e| events.push(e));
        let mut result = Ok(());
        for event in events.drain(..) {
            let r = match event {
                GateEvent::Data { batch, .. } => {
                    self.status.add_records_in(batch.len() as u64, now_ms);
                    crate::failpoint::slow("sink-write");
                    self.unflushed_since.get_or_insert(now_ms);
                    self.sink.write(&batch)
                }
                GateEvent::Watermark(_) | GateEvent::InputWatermark { .. } => Ok(()),
                GateEvent::Barrier(epoch) => self.sink.pre_commit(epoch).map(|state| {
                    self.unflushed_since = None;
                    ack(BarrierAck::Sink { epoch, state });
                }),
                GateEvent::End => self.sink.pre_commit(FINAL_EPOCH).map(|state| {
                    ack(BarrierAck::Sink {
                        epoch: FINAL_EPOCH,
                        state,
                    });
                }),
            };
            if r.is_err() {
                result = r;
                break;
            }
        }
        events.clear();
        self.events = events;
        if control {
            let w = self.gate.watermarks();
            self.status
                .set_watermark(w.current(), w.is_idle(), w.holder(), w.advanced_at_ms());
        }
        result
    }
}

/// A sink's thread.
pub(crate) struct SinkTask {
    driver: SinkDriver,
    inbound: Receiver<Envelope>,
    control: Receiver<Control>,
    link: TaskLink,
    /// The sink's pre-commit in the checkpoint restored; `None`: from the beginning.
    restored: Option<Vec<u8>>,
    /// A bootstrap: the sink is not recovered (it writes nothing).
    bootstrap: bool,
}

impl SinkTask {
    pub(crate) fn new(
        driver: SinkDriver,
        inbound: Receiver<Envelope>,
        control: Receiver<Control>,
        link: TaskLink,
        restored: Option<Vec<u8>>,
        bootstrap: bool,
    ) -> SinkTask {
        SinkTask {
            driver,
            inbound,
            control,
            link,
            restored,
            bootstrap,
        }
    }

    /// The thread's body.
    pub(crate) fn run(mut self) {
        let result = self.write();
        self.link.end(result.map(|()| None));
    }

    fn write(&mut self) -> Result<(), RunError> {
        if !self.bootstrap {
            self.driver.recover(self.restored.as_deref())?;
        }
        let link = &self.link;
        let mut ack = |a: BarrierAck| link.ack(a);
        let none = never();
        loop {
            // Once its input has ended the sink only waits for its last commit.
            let inbound = if self.driver.is_finished() {
                &none
            } else {
                &self.inbound
            };
            select! {
                recv(inbound) -> m => {
                    let Ok((slot, msg)) = m else {
                        if link.stopping.load(Ordering::SeqCst) {
                            // Stopped after a savepoint: its commit may still be queued.
                            while let Ok(Control::CheckpointDone(e)) = self.control.try_recv() {
                                self.driver.commit(e)?;
                            }
                            return Ok(());
                        }
                        return Err(link.stopped("an upstream task stopped"));
                    };
                    let now = link.clock.now_ms();
                    self.driver.on_message(slot as usize, msg, now, &mut ack)?;
                    // Under load more input is queued and rows are flushed in batches (at
                    // the latest after `FLUSH_INTERVAL`); once the queue is empty, at once.
                    if self.inbound.is_empty() {
                        self.driver.flush_idle(now)?;
                    } else {
                        self.driver.flush_due(now)?;
                    }
                }
                recv(self.control) -> c => match c {
                    Ok(Control::CheckpointDone(epoch)) => {
                        self.driver.commit(epoch)?;
                        if epoch == FINAL_EPOCH {
                            return self.driver.finish();
                        }
                    }
                    Ok(Control::Barrier(_)) => {}
                    Ok(Control::Stop) if link.stopping.load(Ordering::SeqCst) => {
                        // Stopped after a savepoint while waiting for the last commit, which
                        // will not come.
                        return Ok(());
                    }
                    Ok(Control::Stop) | Err(_) => {
                        return Err(link.stopped("the run stopped before its last commit"));
                    }
                },
                default(FLUSH_INTERVAL) => {
                    self.driver.flush_due(link.clock.now_ms())?;
                }
            }
        }
    }
}

/// The sink of a bootstrap run: it receives nothing worth keeping and writes nothing.
pub(crate) struct Discard;

impl Sink for Discard {
    fn guarantee(&self) -> Guarantee {
        Guarantee::ExactlyOnce
    }
    fn write(&mut self, _: &crate::types::Batch) -> Result<(), RunError> {
        Ok(())
    }
    fn pre_commit(&mut self, _: Epoch) -> Result<Vec<u8>, RunError> {
        Ok(Vec::new())
    }
    fn commit(&mut self, _: Epoch) -> Result<(), RunError> {
        Ok(())
    }
    fn recover(&mut self, _: Option<&[u8]>) -> Result<(), RunError> {
        Ok(())
    }
    fn finish(&mut self) -> Result<(), RunError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{InstanceStatus, Role};
    use crate::types::{Batch, DataType, Field, Schema, Value};
    use std::sync::Mutex;

    /// A straight-through sink that keeps written values until `flush` shows them in
    /// `shown` (as a file sink keeps lines in its buffer).
    struct Buffered {
        held: Vec<Value>,
        shown: Arc<Mutex<Vec<Value>>>,
    }

    impl Sink for Buffered {
        fn guarantee(&self) -> Guarantee {
            Guarantee::AtLeastOnce
        }
        fn write(&mut self, batch: &Batch) -> Result<(), RunError> {
            self.held
                .extend(batch.rows().map(|(row, _)| row[0].clone()));
            Ok(())
        }
        fn pre_commit(&mut self, _: Epoch) -> Result<Vec<u8>, RunError> {
            self.flush()?;
            Ok(Vec::new())
        }
        fn commit(&mut self, _: Epoch) -> Result<(), RunError> {
            Ok(())
        }
        fn recover(&mut self, _: Option<&[u8]>) -> Result<(), RunError> {
            Ok(())
        }
        fn finish(&mut self) -> Result<(), RunError> {
            self.flush()
        }
        fn flush(&mut self) -> Result<(), RunError> {
            let mut shown = self.shown.lock().unwrap();
            shown.append(&mut self.held);
            Ok(())
        }
    }

    fn buffered() -> (Buffered, Arc<Mutex<Vec<Value>>>) {
        let shown = Arc::new(Mutex::new(Vec::new()));
        let sink = Buffered {
            held: Vec::new(),
            shown: shown.clone(),
        };
        (sink, shown)
    }

    /// Latency: rows a straight-through sink has written are flushed as soon as its input has
    /// nothing more queued, without waiting `FLUSH_INTERVAL`. The clock is manual and never
    /// moves, so only that can show the row (the wait below only bounds a hang).
    #[test]
    fn rows_are_flushed_as_soon_as_the_input_queue_is_empty() {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int)]));
        let (sink, shown) = buffered();
        let status = Arc::new(InstanceStatus::new(
            "out",
            0,
            Role::Sink,
            vec!["up#0".into()],
            &["main".into()],
            0,
        ));
        let driver = SinkDriver::new(Box::new(sink), vec![0], status, 0);
        let (tx, rx) = crossbeam_channel::bounded(4);
        let (_ctl_tx, ctl_rx) = crossbeam_channel::unbounded();
        let (reports, _reports_rx) = crossbeam_channel::unbounded();
        let clock: crate::time::ClockRef = crate::time::ManualClock::new(0);
        let link = TaskLink {
            name: "out#0".into(),
            reports,
            failed: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            stopping: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            clock,
        };
        let task = SinkTask::new(driver, rx, ctl_rx, link, None, false);
        let thread = std::thread::spawn(move || task.run());
        let mut batch = Batch::new(schema);
        batch.push_row([Value::Int(7)], 0);
        tx.send((0, Message::Data(batch))).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while *shown.lock().unwrap() != [Value::Int(7)] {
            assert!(
                std::time::Instant::now() < deadline,
                "the row was never flushed"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        drop(tx);
        thread.join().unwrap();
    }

    /// Regression: a straight-through file sink showed its lines only at the next barrier
    /// (10 s by default). Written lines now wait at most `FLUSH_INTERVAL` of processing time.
    #[test]
    fn written_rows_are_flushed_once_they_have_waited_the_flush_interval() {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int)]));
        let (sink, shown) = buffered();
        let status = Arc::new(InstanceStatus::new(
            "out",
            0,
            Role::Sink,
            vec!["up#0".into()],
            &["main".into()],
            0,
        ));
        let mut driver = SinkDriver::new(Box::new(sink), vec![0], status, 0);
        driver.recover(None).unwrap();
        let mut batch = Batch::new(schema);
        batch.push_row([Value::Int(7)], 0);
        let interval = FLUSH_INTERVAL.as_millis() as i64;
        driver
            .on_message(0, Message::Data(batch), 1_000, &mut |_| {})
            .unwrap();
        driver.flush_due(1_000 + interval - 1).unwrap();
        assert_eq!(*shown.lock().unwrap(), [], "still buffered");
        driver.flush_due(1_000 + interval).unwrap();
        assert_eq!(*shown.lock().unwrap(), [Value::Int(7)]);
    }
}
