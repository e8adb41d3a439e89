//! What sinks of derived rows (fed by operators — enriched events, windows, routes — or by a
//! source's rows or dead letters) should hold: the pipeline run again from its sources — which must be replayable: files not
//! followed, generators with a `count` — with those sinks replaced by collectors of their
//! keys and every other sink by one that writes nothing, and no checkpoints. Nothing outside
//! the process is read twice or written.
//!
//! Versions are not compared for these sinks (a rerun's rows carry the same event times,
//! but a sink may take its version from elsewhere): missing and extra keys are.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::dataflow::{Guarantee, Sink};
use crate::error::RunError;
use crate::reconcile::KeyVersions;
use crate::reconcile::expected::key_text;
use crate::runtime::plan::{NodeKind, Plan, SinkFactory};
use crate::runtime::{RunContext, run};
use crate::status::StatusRegistry;
use crate::types::{Batch, Epoch};

/// A sink to reconcile by rerunning: its name and key columns.
pub struct Target {
    pub sink: String,
    pub key: Vec<String>,
}

/// Collects the keys of the rows a sink is given (change rows — a table routed on —
/// applied as changes: deletes remove their key).
struct Collector {
    key: Vec<usize>,
    changes: bool,
    keys: Arc<Mutex<KeyVersions>>,
    unkeyed: Arc<Mutex<u64>>,
}

impl Sink for Collector {
    fn guarantee(&self) -> Guarantee {
        Guarantee::ExactlyOnce
    }

    fn write(&mut self, batch: &Batch) -> Result<(), RunError> {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if self.changes {
            return crate::reconcile::expected::apply(batch, &self.key, &mut keys).map_err(|m| {
                RunError::External {
                    component: "reconcile".into(),
                    message: m,
                    class: crate::error::ErrorClass::Definite,
                }
            });
        }
        for (row, _) in batch.rows() {
            match key_text(row, &self.key) {
                Some(k) => {
                    keys.insert(k, None);
                }
                None => *self.unkeyed.lock().unwrap_or_else(|p| p.into_inner()) += 1,
            }
        }
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

/// Runs `plan` again (see the module docs) and returns, per target sink, the keys it was
/// given.
pub fn expected_by_rerun(
    mut plan: Plan,
    replayable: &[String],
    targets: &[Target],
) -> Result<BTreeMap<String, KeyVersions>, String> {
    for node in &plan.nodes {
        if matches!(node.kind, NodeKind::Source { .. }) && !replayable.contains(&node.name) {
            return Err(format!(
                "source `{}` cannot be read again without side effects (a followed file, an \
                 unbounded generator, a broker or a database): sinks fed by operators are \
                 reconciled by running the pipeline again, from files and generators only",
                node.name
            ));
        }
    }
    plan.options.checkpoint_dir = None;
    let mut collected = BTreeMap::new();
    let mut unkeyed = Vec::new();
    let schemas: Vec<_> = plan
        .nodes
        .iter()
        .map(|n| {
            n.inputs
                .first()
                .map(|i| plan.nodes[i.node].ports[i.port].schema.clone())
        })
        .collect();
    for (node, schema) in plan.nodes.iter_mut().zip(schemas) {
        let NodeKind::Sink { factory } = &mut node.kind else {
            continue;
        };
        match targets.iter().find(|t| t.sink == node.name) {
            Some(t) => {
                let schema = schema.ok_or_else(|| format!("sink `{}` has no input", t.sink))?;
                let key = t
                    .key
                    .iter()
                    .map(|k| {
                        schema.index_of(k).ok_or_else(|| {
                            format!("key column `{k}` is not in `{}`'s input", t.sink)
                        })
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                let changes = crate::cdc::rows::is_change_schema(&schema);
                let keys = Arc::new(Mutex::new(KeyVersions::new()));
                let missing_key = Arc::new(Mutex::new(0u64));
                collected.insert(t.sink.clone(), keys.clone());
                unkeyed.push((t.sink.clone(), missing_key.clone()));
                *factory = Arc::new(move |_| {
                    Ok(Box::new(Collector {
                        key: key.clone(),
                        changes,
                        keys: keys.clone(),
                        unkeyed: missing_key.clone(),
                    }) as Box<dyn Sink>)
                }) as SinkFactory;
            }
            None => {
                *factory =
                    Arc::new(|_| Ok(Box::new(crate::runtime::task::Discard) as Box<dyn Sink>));
            }
        }
    }
    let name = plan.name.clone();
    let ctx = RunContext::new(
        crate::time::clock::SystemClock::shared(),
        StatusRegistry::new(&name),
    );
    run(plan, ctx).map_err(|e| format!("running the pipeline again: {e}"))?;
    for (sink, n) in unkeyed {
        let n = *n.lock().unwrap_or_else(|p| p.into_inner());
        if n > 0 {
            return Err(format!(
                "sink `{sink}` was given {n} rows whose key is not an int, string, timestamp or \
                 date, or is null: they cannot be compared"
            ));
        }
    }
    Ok(collected
        .into_iter()
        .map(|(k, v)| {
            let keys = std::mem::take(&mut *v.lock().unwrap_or_else(|p| p.into_inner()));
            (k, keys)
        })
        .collect())
}
