//! The `stdout: true` block of a sink.

use std::sync::Arc;

use serde::Deserialize;

use crate::config::component::{BuiltSink, SinkConfig, SinkContext};
use crate::dataflow::{Guarantee, Sink};
use crate::runtime::plan::SinkFactory;
use crate::sinks::stdout::StdoutSink;

/// `true`: print the rows.
#[derive(Debug, Deserialize)]
#[serde(transparent)]
pub struct StdoutConfig(pub bool);

impl SinkConfig for StdoutConfig {
    fn build(&self, cx: &mut SinkContext<'_>) -> Option<BuiltSink> {
        if !self.0 {
            let at = cx.location;
            cx.issue(
                &at,
                "",
                "`stdout: false` writes nowhere; use `file: PATH` instead",
            );
            return None;
        }
        let schema = cx.schema.clone();
        let columns = cx.columns.clone();
        let factory: SinkFactory = Arc::new(move |_| {
            Ok(Box::new(StdoutSink::new(schema.clone(), columns.clone())) as Box<dyn Sink>)
        });
        Some(BuiltSink {
            factory,
            target: "stdout".into(),
            guarantee: Guarantee::AtLeastOnce,
            writes: None,
            writes_json: true,
            holdings: None,
            preflight: None,
        })
    }
}
