//! The `route:` block of an operator: side outputs by value — each row goes to the first
//! port listing its `field` value, else to `main`.

use std::sync::Arc;

use indexmap::IndexMap;
use serde::Deserialize;

use crate::config::component::{BuiltOperator, OperatorConfig, OperatorContext};
use crate::config::yaml::S;
use crate::dataflow::Operator;
use crate::operators::route::{RouteOperator, RoutePort};
use crate::runtime::plan::OperatorFactory;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub field: S<String>,
    pub ports: IndexMap<String, S<Vec<S<String>>>>,
}

impl OperatorConfig for RouteConfig {
    fn build(&self, cx: &mut OperatorContext<'_>) -> Option<BuiltOperator> {
        let schema = cx.same_schema()?;
        let column = &self.field;
        let Some(ty) = schema
            .index_of(&column.value)
            .map(|i| schema.field(i).data_type)
        else {
            cx.issue(
                &column.referenced,
                "field",
                format!("`{}` is not a column of the input", column.value),
            );
            return None;
        };
        let mut ports = Vec::new();
        for (port, values) in &self.ports {
            let mut vs = Vec::new();
            for v in &values.value {
                match RouteOperator::value_of(&v.value, ty) {
                    Some(x) => vs.push(x),
                    None => cx.issue(
                        &v.referenced,
                        &format!("ports.{port}"),
                        format!(
                            "`{}` is not a {ty} value (routing works on string, int, float and \
                             bool columns)",
                            v.value
                        ),
                    ),
                }
            }
            ports.push(RoutePort {
                name: port.clone(),
                values: vs,
            });
        }
        if ports.is_empty() {
            let at = cx.location;
            cx.issue(&at, "ports", "list at least one port: `NAME: [value, ...]`");
            return None;
        }
        let probe = match RouteOperator::new(&column.value, ports.clone(), schema.clone()) {
            Ok(op) => op,
            Err(e) => {
                let at = cx.location;
                cx.issue(&at, &e.field, e.message);
                return None;
            }
        };
        let column = column.value.clone();
        let reads: Vec<String> = vec![schema.field(probe.column()).name.to_string()];
        let node = cx.name.to_string();
        let factory: OperatorFactory = Arc::new(move |_| {
            let op = RouteOperator::new(&column, ports.clone(), schema.clone())
                .map_err(|e| crate::error::RunError::build(node.clone(), e.message))?;
            Ok(Box::new(op) as Box<dyn Operator>)
        });
        Some(BuiltOperator {
            ports: probe.ports(),
            factory,
            key_columns: None,
            broadcast_inputs: Vec::new(),
            reads,
        })
    }
}
