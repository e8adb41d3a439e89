//! The `file: PATH` block of a sink: JSON lines into a file (relative to the working
//! directory; under `--out DIR` when it is under `watershed-out/`), transactional when the
//! pipeline keeps checkpoints.

use std::sync::Arc;

use serde::Deserialize;

use crate::config::component::{BuiltSink, SinkConfig, SinkContext};
use crate::dataflow::{Guarantee, Sink};
use crate::runtime::plan::SinkFactory;
use crate::sinks::file::JsonLinesSink;

/// The output file's path.
#[derive(Debug, Deserialize)]
#[serde(transparent)]
pub struct FileSinkConfig(pub String);

impl SinkConfig for FileSinkConfig {
    fn build(&self, cx: &mut SinkContext<'_>) -> Option<BuiltSink> {
        if self.0.trim().is_empty() {
            let at = cx.location;
            cx.issue(&at, "", "name the output file: `file: PATH`");
            return None;
        }
        let path = cx.output_path(&self.0);
        let schema = cx.schema.clone();
        let columns = cx.columns.clone();
        let transactional = cx.transactional;
        let target = path.display().to_string();
        let path_written = path.clone();
        let name = cx.name.to_string();
        let factory: SinkFactory = Arc::new(move |_| {
            Ok(Box::new(JsonLinesSink::create(
                &name,
                &path,
                schema.clone(),
                columns.clone(),
                transactional,
            )?) as Box<dyn Sink>)
        });
        Some(BuiltSink {
            factory,
            target,
            writes: Some(path_written),
            guarantee: if transactional {
                Guarantee::ExactlyOnce
            } else {
                Guarantee::AtLeastOnce
            },
            writes_json: true,
            holdings: None,
            preflight: None,
        })
    }
}
