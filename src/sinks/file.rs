//! The file and stdout sinks: JSON lines, one object per row, in schema order. Writes are
//! buffered and flushed at every barrier and at the end. (Atomic per-epoch commit for
//! exactly-once output is the checkpointing work's; this sink is at-least-once.)

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::RunError;
use crate::format::json::JsonEncoder;
use crate::sinks::{Guarantee, Sink};
use crate::types::{Batch, Epoch, SchemaRef};

/// Writes JSON lines to a file or to standard output.
pub struct JsonLinesSink {
    target: String,
    encoder: JsonEncoder,
    writer: Box<dyn Write + Send>,
    buf: Vec<u8>,
}

impl JsonLinesSink {
    /// A sink writing to `path` (created or truncated; parent directories are created),
    /// only `columns` (indices into the schema) when given.
    pub fn create(
        path: &Path,
        schema: SchemaRef,
        columns: Option<Vec<usize>>,
    ) -> Result<JsonLinesSink, RunError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| RunError::io(format!("cannot create {}", dir.display()), e))?;
        }
        let f = File::create(path)
            .map_err(|e| RunError::io(format!("cannot create {}", path.display()), e))?;
        Ok(JsonLinesSink::new(
            path.display().to_string(),
            JsonEncoder::with_columns(schema, columns),
            Box::new(BufWriter::with_capacity(1 << 20, f)),
        ))
    }

    pub fn stdout(schema: SchemaRef, columns: Option<Vec<usize>>) -> JsonLinesSink {
        JsonLinesSink::new(
            "stdout".into(),
            JsonEncoder::with_columns(schema, columns),
            Box::new(BufWriter::new(std::io::stdout())),
        )
    }

    fn new(target: String, encoder: JsonEncoder, writer: Box<dyn Write + Send>) -> JsonLinesSink {
        JsonLinesSink {
            target,
            encoder,
            writer,
            buf: Vec::with_capacity(1 << 16),
        }
    }

    fn flush(&mut self) -> Result<(), RunError> {
        self.writer
            .flush()
            .map_err(|e| RunError::io(format!("cannot write {}", self.target), e))
    }
}

impl Sink for JsonLinesSink {
    fn guarantee(&self) -> Guarantee {
        Guarantee::AtLeastOnce
    }

    fn write(&mut self, batch: &Batch) -> Result<(), RunError> {
        self.buf.clear();
        for (row, _) in batch.rows() {
            self.encoder.encode_row(row, &mut self.buf);
            self.buf.push(b'\n');
        }
        self.writer
            .write_all(&self.buf)
            .map_err(|e| RunError::io(format!("cannot write {}", self.target), e))
    }

    fn on_barrier(&mut self, _epoch: Epoch) -> Result<(), RunError> {
        self.flush()
    }

    fn finish(&mut self) -> Result<(), RunError> {
        self.flush()
    }
}

/// Where a file sink writes, for messages.
pub fn describe(path: Option<&PathBuf>) -> String {
    path.map_or_else(|| "stdout".to_string(), |p| p.display().to_string())
}
