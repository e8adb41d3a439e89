//! The route operator: user-defined side outputs. Each row goes to the first port whose list
//! of values contains the row's value in the routing column, or to `main` if none does. Rows
//! are moved, never copied or dropped. Stateless: its snapshot is empty.

use crate::dataflow::{MAIN_PORT, Operator, Output, PortSpec};
use crate::error::{SpecError, StateError};
use crate::state::StateImage;
use crate::types::{Batch, DataType, EventTime, SchemaRef, Value};

pub mod config;
pub use config::RouteConfig;

/// One side output: its name and the values that select it.
#[derive(Clone, Debug, PartialEq)]
pub struct RoutePort {
    pub name: String,
    pub values: Vec<Value>,
}

pub struct RouteOperator {
    column: usize,
    ports: Vec<RoutePort>,
    schema: SchemaRef,
}

impl RouteOperator {
    /// The column rows are routed by.
    pub fn column(&self) -> usize {
        self.column
    }

    pub fn new(
        field: &str,
        ports: Vec<RoutePort>,
        schema: SchemaRef,
    ) -> Result<RouteOperator, SpecError> {
        let Some(column) = schema.index_of(field) else {
            return Err(SpecError::new(
                "field",
                format!("`{field}` is not a column of the input"),
            ));
        };
        let ty = schema.field(column).data_type;
        for p in &ports {
            if p.name == MAIN_PORT || p.name.is_empty() || p.name.contains('.') {
                return Err(SpecError::new(
                    format!("ports.{}", p.name),
                    "a port name must not be empty, `main` or contain `.`",
                ));
            }
            if let Some(v) = p
                .values
                .iter()
                .find(|v| !v.is_null() && v.data_type() != ty)
            {
                return Err(SpecError::new(
                    format!("ports.{}", p.name),
                    format!("value {v:?} is {}, but `{field}` is {ty}", v.data_type()),
                ));
            }
        }
        Ok(RouteOperator {
            column,
            ports,
            schema,
        })
    }

    /// Converts a YAML scalar (as text) to a value of the routing column's type.
    pub fn value_of(text: &str, ty: DataType) -> Option<Value> {
        match ty {
            DataType::String => Some(Value::from(text)),
            DataType::Int => text.parse().ok().map(Value::Int),
            DataType::Float => text.parse().ok().map(Value::Float),
            DataType::Bool => text.parse().ok().map(Value::Bool),
            _ => None,
        }
    }

    fn port_of(&self, row: &[Value]) -> usize {
        let v = &row[self.column];
        self.ports
            .iter()
            .position(|p| p.values.contains(v))
            .map_or(0, |i| i + 1)
    }
}

impl Operator for RouteOperator {
    fn ports(&self) -> Vec<PortSpec> {
        std::iter::once(MAIN_PORT.to_string())
            .chain(self.ports.iter().map(|p| p.name.clone()))
            .map(|name| PortSpec {
                name,
                schema: self.schema.clone(),
            })
            .collect()
    }

    fn process(&mut self, _input: usize, batch: Batch, out: &mut Output) {
        let n = self.ports.len() + 1;
        let parts = batch.split_by(n, |row| self.port_of(row));
        for (port, part) in parts.into_iter().enumerate() {
            if !part.is_empty() {
                out.emit(port, part);
            }
        }
    }

    fn on_watermark(&mut self, _watermark: EventTime, _out: &mut Output) {}

    fn snapshot(&mut self) -> Result<StateImage, StateError> {
        Ok(StateImage::default())
    }

    fn restore(&mut self, _snapshot: &StateImage) -> Result<(), StateError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Harness;
    use crate::types::{Field, Schema};
    use std::sync::Arc;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("product", DataType::String),
            Field::new("port", DataType::Int),
        ]))
    }

    #[test]
    fn rows_go_to_the_first_matching_port_or_main() {
        let op = RouteOperator::new(
            "product",
            vec![
                RoutePort {
                    name: "tls".into(),
                    values: vec![Value::from("openssl")],
                },
                RoutePort {
                    name: "web".into(),
                    values: vec![Value::from("nginx"), Value::from("openssl")],
                },
            ],
            schema(),
        )
        .unwrap();
        let mut h = Harness::new(op, 1);
        let mut b = Batch::new(schema());
        for (p, port) in [
            ("openssl", 443),
            ("nginx", 80),
            ("exim", 25),
            ("nginx", 8080),
        ] {
            b.push_row([Value::from(p), Value::Int(port)], port);
        }
        h.data(0, b);
        let all = h.take_all();
        assert_eq!(all["tls"].len(), 1);
        assert_eq!(
            all["web"].iter().map(|r| r.1).collect::<Vec<_>>(),
            vec![80, 8080]
        );
        assert_eq!(all["main"][0].0[0], Value::from("exim"));
        // Stateless: a restored instance behaves the same.
        let snap = h.barrier();
        assert!(snap.is_empty());
    }

    #[test]
    fn wrong_column_or_value_type_is_a_spec_error() {
        assert_eq!(
            RouteOperator::new("nope", vec![], schema())
                .err()
                .unwrap()
                .field,
            "field"
        );
        let e = RouteOperator::new(
            "port",
            vec![RoutePort {
                name: "x".into(),
                values: vec![Value::from("443")],
            }],
            schema(),
        )
        .err()
        .unwrap();
        assert_eq!(e.field, "ports.x");
    }
}
