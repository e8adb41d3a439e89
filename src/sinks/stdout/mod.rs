//! The stdout sink: JSON lines on standard output, one object per row, in schema order (or
//! the sink's `columns`), flushed at every barrier, at the end, whenever its input has nothing
//! more queued, and under load once written lines have waited `FLUSH_INTERVAL`.
//!
//! Protocol: nothing printed can be taken back, so the sink is at-least-once — a restart
//! from a checkpoint prints again what came after it. Its pre-commit is empty; `commit`
//! and `recover` have nothing to do.

use std::io::{BufWriter, Write};

use crate::dataflow::{Guarantee, Sink};
use crate::error::RunError;
use crate::format::json::JsonEncoder;
use crate::types::{Batch, Epoch, SchemaRef};

pub mod config;
pub use config::StdoutConfig;

/// Writes JSON lines to standard output (or, for tests, any writer).
pub struct StdoutSink {
    encoder: JsonEncoder,
    buf: Vec<u8>,
    out: BufWriter<Box<dyn Write + Send>>,
}

impl StdoutSink {
    pub fn new(schema: SchemaRef, columns: Option<Vec<usize>>) -> StdoutSink {
        StdoutSink::to_writer(schema, columns, Box::new(std::io::stdout()))
    }

    /// The same sink writing to `out`.
    pub fn to_writer(
        schema: SchemaRef,
        columns: Option<Vec<usize>>,
        out: Box<dyn Write + Send>,
    ) -> StdoutSink {
        StdoutSink {
            encoder: JsonEncoder::with_columns(schema, columns),
            buf: Vec::with_capacity(1 << 16),
            out: BufWriter::new(out),
        }
    }

    fn io(e: std::io::Error) -> RunError {
        RunError::io("cannot write to stdout", e)
    }
}

impl Sink for StdoutSink {
    fn guarantee(&self) -> Guarantee {
        Guarantee::AtLeastOnce
    }

    fn write(&mut self, batch: &Batch) -> Result<(), RunError> {
        self.buf.clear();
        for (row, _) in batch.rows() {
            self.encoder.encode_row(row, &mut self.buf);
            self.buf.push(b'\n');
        }
        self.out.write_all(&self.buf).map_err(StdoutSink::io)
    }

    fn pre_commit(&mut self, _epoch: Epoch) -> Result<Vec<u8>, RunError> {
        self.out.flush().map_err(StdoutSink::io)?;
        Ok(Vec::new())
    }

    fn commit(&mut self, _epoch: Epoch) -> Result<(), RunError> {
        Ok(())
    }

    fn recover(&mut self, _state: Option<&[u8]>) -> Result<(), RunError> {
        Ok(())
    }

    fn finish(&mut self) -> Result<(), RunError> {
        self.flush()
    }

    fn flush(&mut self) -> Result<(), RunError> {
        self.out.flush().map_err(StdoutSink::io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{DataType, Field, Schema, Value};
    use std::sync::{Arc, Mutex};

    /// A writer whose bytes the test can read.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_appear_at_the_barrier_in_column_order() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int),
            Field::new("b", DataType::String),
        ]));
        let out = Shared::default();
        let mut sink =
            StdoutSink::to_writer(schema.clone(), Some(vec![1, 0]), Box::new(out.clone()));
        sink.recover(None).unwrap();
        let mut batch = Batch::new(schema);
        batch.push_row([Value::Int(1), Value::from("x")], 0);
        sink.write(&batch).unwrap();
        assert!(sink.pre_commit(1).unwrap().is_empty());
        sink.commit(1).unwrap();
        sink.finish().unwrap();
        assert_eq!(
            String::from_utf8(out.0.lock().unwrap().clone()).unwrap(),
            "{\"b\":\"x\",\"a\":1}\n"
        );
    }
}
