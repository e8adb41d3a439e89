//! The enrichment operator's `Layout`: the spec resolved against the event schema and the
//! reference table's change rows (column positions, the table columns kept, the residual
//! conditions, whether an event's match is one lookup), checked on the way, with the
//! output columns. Nothing here holds state.

use super::spec::{CmpOp, EnrichSpec, spec_err};
use crate::cdc::rows;
use crate::error::SpecError;
use crate::types::{DataType, Field, Schema};

/// Column positions resolved from the spec.
#[derive(Clone, Debug)]
pub(super) struct Layout {
    /// Event columns of the join key.
    pub(super) event_key: Vec<usize>,
    /// Table columns (not change-row columns) of the join key.
    pub(super) table_key: Vec<usize>,
    pub(super) primary_key: Vec<usize>,
    /// Table columns copied to the output.
    pub(super) selected: Vec<usize>,
    /// Table columns of which an event keeps one match per distinct value (`spec.distinct`).
    pub(super) distinct: Vec<usize>,
    /// Event column of the observed version, and table columns of the rule.
    pub(super) version: Option<(usize, [Option<usize>; 6])>,
    pub(super) table_schema: Schema,
    /// The table's columns the join reads (key, primary key, selected, distinct, rule and
    /// condition columns), as indices into the change rows' table columns: only these are stored, and
    /// every other index of the layout points into a stored row.
    pub(super) stored: Vec<usize>,
    /// Residual conditions: (event column, op, table column).
    pub(super) conditions: Vec<(usize, CmpOp, usize)>,
    /// The join key is the primary key and there is no version rule nor condition: an
    /// event's match is one table lookup, with no secondary index and no memo.
    pub(super) direct: bool,
}

impl Layout {
    /// Resolves `spec` against the events' schema and the change rows' (`reference`); also
    /// returns the output columns: the events', the selected table columns, then
    /// `<table>_matched`.
    pub(super) fn resolve(
        spec: &EnrichSpec,
        event_schema: &Schema,
        reference: &Schema,
    ) -> Result<(Layout, Vec<Field>), SpecError> {
        if !rows::is_change_schema(reference) {
            return Err(spec_err(
                "inputs[1]",
                "the second input must be a table port of a change stream (`source.table`)",
            ));
        }
        let table_schema = rows::table_schema(reference);
        let table_col = |field: &str, name: &str| {
            table_schema.index_of(name).ok_or_else(|| {
                spec_err(
                    field,
                    format!("`{name}` is not a column of table `{}`", spec.table),
                )
            })
        };
        let event_col = |field: &str, name: &str| {
            event_schema
                .index_of(name)
                .ok_or_else(|| spec_err(field, format!("`{name}` is not a column of the events")))
        };
        if spec.key.is_empty() {
            return Err(spec_err(
                "key",
                "name at least one join column: `event_column: table_column`",
            ));
        }
        let mut event_key = Vec::new();
        let mut table_key = Vec::new();
        for (e, t) in &spec.key {
            event_key.push(event_col(&format!("key.{e}"), e)?);
            table_key.push(table_col(&format!("key.{e}"), t)?);
        }
        if spec.primary_key.is_empty() {
            return Err(spec_err(
                "inputs[1]",
                format!(
                    "table `{}` has no primary key (`key` in its cdc table)",
                    spec.table
                ),
            ));
        }
        let primary_key = spec
            .primary_key
            .iter()
            .map(|c| table_col("inputs[1]", c))
            .collect::<Result<Vec<_>, _>>()?;
        let selected: Vec<usize> = match &spec.columns {
            Some(cols) => cols
                .iter()
                .enumerate()
                .map(|(i, c)| table_col(&format!("columns[{i}]"), c))
                .collect::<Result<_, _>>()?,
            None => (0..table_schema.len())
                .filter(|&i| event_schema.index_of(&table_schema.field(i).name).is_none())
                .collect(),
        };
        let distinct: Vec<usize> = spec
            .distinct
            .iter()
            .enumerate()
            .map(|(i, c)| table_col(&format!("distinct[{i}]"), c))
            .collect::<Result<_, _>>()?;
        let matched_name = format!("{}_matched", spec.table);
        let mut fields = event_schema.fields.clone();
        for (n, &i) in selected.iter().enumerate() {
            let f = table_schema.field(i);
            if event_schema.index_of(&f.name).is_some() || f.name == matched_name {
                return Err(spec_err(
                    format!("columns[{n}]"),
                    format!(
                        "`{}` is also a column of the events; leave it out of `columns`",
                        f.name
                    ),
                ));
            }
            fields.push(f.clone());
        }
        if event_schema.index_of(&matched_name).is_some() {
            return Err(spec_err(
                "table",
                format!("the events already have a column `{matched_name}`"),
            ));
        }
        fields.push(Field::new(&matched_name, DataType::Bool));
        let version = match &spec.version_range {
            None => None,
            Some(v) => {
                let ev = event_col("version_range.version", &v.version)?;
                let col =
                    |name: &Option<String>, field: &str| -> Result<Option<usize>, SpecError> {
                        name.as_ref()
                            .map(|n| table_col(&format!("version_range.{field}"), n))
                            .transpose()
                    };
                Some((
                    ev,
                    [
                        col(&v.exact, "exact")?,
                        col(&v.start_including, "start_including")?,
                        col(&v.start_excluding, "start_excluding")?,
                        col(&v.end_including, "end_including")?,
                        col(&v.end_excluding, "end_excluding")?,
                        col(&v.update, "update")?,
                    ],
                ))
            }
        };
        let mut conditions = Vec::new();
        for (n, c) in spec.conditions.iter().enumerate() {
            let field = format!("where[{n}]");
            let e = event_col(&field, &c.event)?;
            let t = table_col(&field, &c.table)?;
            let (et, tt) = (
                event_schema.field(e).data_type,
                table_schema.field(t).data_type,
            );
            let numeric = |d: DataType| matches!(d, DataType::Int | DataType::Float);
            if et != tt && !(numeric(et) && numeric(tt)) {
                return Err(spec_err(
                    field,
                    format!(
                        "`{}` is {et} and `{}` is {tt}: a condition compares values of one type",
                        c.event, c.table
                    ),
                ));
            }
            conditions.push((e, c.op, t));
        }
        // Keep only the columns the join reads, and point the layout into the kept row.
        // The primary key first, so that the table stores the key only once (as the row's
        // start), then the other columns the join reads, in table order.
        let mut rest: Vec<usize> = table_key
            .iter()
            .chain(&selected)
            .chain(&distinct)
            .chain(version.iter().flat_map(|(_, cols)| cols.iter().flatten()))
            .chain(conditions.iter().map(|(_, _, t)| t))
            .copied()
            .filter(|i| !primary_key.contains(i))
            .collect();
        rest.sort_unstable();
        rest.dedup();
        let mut stored = primary_key.clone();
        stored.dedup();
        stored.extend(rest);
        let at = |i: usize| {
            stored
                .iter()
                .position(|&c| c == i)
                .expect("every used column is stored")
        };
        let table_key: Vec<usize> = table_key.into_iter().map(at).collect();
        let primary_key: Vec<usize> = primary_key.into_iter().map(at).collect();
        let selected: Vec<usize> = selected.into_iter().map(at).collect();
        let distinct: Vec<usize> = distinct.into_iter().map(at).collect();
        let version = version.map(|(e, cols)| (e, cols.map(|c| c.map(at))));
        let conditions: Vec<(usize, CmpOp, usize)> = conditions
            .into_iter()
            .map(|(e, op, t)| (e, op, at(t)))
            .collect();
        let table_schema = Schema::new(
            stored
                .iter()
                .map(|&i| table_schema.field(i).clone())
                .collect(),
        );
        let layout = Layout {
            direct: version.is_none() && conditions.is_empty() && table_key == primary_key,
            conditions,
            event_key,
            table_key,
            primary_key,
            selected,
            distinct,
            version,
            table_schema,
            stored,
        };
        Ok((layout, fields))
    }
}
