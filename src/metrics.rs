//! Metric names (Prometheus style: `watershed_<name>_<unit>[_total]`), their descriptions
//! (the `# HELP` lines of `/metrics`) and the label keys used with them. Components take
//! handles once at start and update them per batch.

pub const RECORDS_IN: &str = "watershed_records_in_total";
pub const RECORDS_OUT: &str = "watershed_records_out_total";
pub const NODE_WATERMARK: &str = "watershed_node_watermark_milliseconds";
pub const NODE_WATERMARK_LAG: &str = "watershed_node_watermark_lag_milliseconds";
pub const NODE_IDLE: &str = "watershed_node_idle";
pub const PARTITION_WATERMARK: &str = "watershed_source_partition_watermark_milliseconds";
pub const PARTITION_IDLE: &str = "watershed_source_partition_idle";
pub const PARTITION_SILENT: &str = "watershed_source_partition_silent_milliseconds";
pub const LATE_RECORDS: &str = "watershed_late_records_total";
pub const DEAD_LETTER_RECORDS: &str = "watershed_dead_letter_records_total";
pub const IDLE_TRANSITIONS: &str = "watershed_source_idle_transitions_total";
pub const CDC_SKIPPED_RECORDS: &str = "watershed_cdc_skipped_records_total";
/// WAL the server has written that a native Postgres source has not read yet.
pub const CDC_REPLICATION_LAG_BYTES: &str = "watershed_cdc_replication_lag_bytes";
/// How far behind the database's clock the last transaction read was committed (0 when
/// caught up).
pub const CDC_REPLICATION_LAG_MS: &str = "watershed_cdc_replication_lag_milliseconds";
/// WAL the server keeps for the source's replication slot (what it may not recycle).
pub const CDC_SLOT_RETAINED_BYTES: &str = "watershed_cdc_slot_retained_wal_bytes";
pub const ENRICH_LOOKUPS: &str = "watershed_enrich_lookups_total";
pub const ENRICH_MATCHED: &str = "watershed_enrich_matched_total";
pub const ENRICH_MISSES: &str = "watershed_enrich_misses_total";
pub const ENRICH_GATE_BUFFERED: &str = "watershed_enrich_gate_buffered_records";
pub const ENRICH_GATE_OPEN: &str = "watershed_enrich_gate_open";
pub const REFERENCE_ROWS: &str = "watershed_reference_rows";
pub const REFERENCE_STATE_BYTES: &str = "watershed_reference_state_bytes";
pub const ALERTS_FIRED: &str = "watershed_alerts_fired_total";
pub const ALERT_ACTIVE: &str = "watershed_alert_active";
pub const BARRIERS_COMPLETED: &str = "watershed_checkpoint_epochs_completed_total";
pub const LAST_EPOCH: &str = "watershed_checkpoint_last_completed_epoch";
pub const CHECKPOINT_FAILURES: &str = "watershed_checkpoint_failures_total";
pub const CHECKPOINT_BYTES: &str = "watershed_checkpoint_last_bytes";
pub const CHECKPOINT_DURATION_MS: &str = "watershed_checkpoint_last_duration_ms";
pub const CHECKPOINT_ALIGNMENT_MS: &str = "watershed_checkpoint_last_alignment_ms";
pub const GROUP_REBALANCES: &str = "watershed_source_group_rebalances_total";
pub const GROUP_HANDED_OVER: &str = "watershed_source_group_partitions_handed_over_total";
/// How long the last start took to restore its checkpoint (reading, verifying and loading).
pub const RESTORE_MS: &str = "watershed_restore_milliseconds";
pub const TRANSIENT_ERRORS: &str = "watershed_transient_errors_total";
pub const RESTARTS: &str = "watershed_restarts_total";
pub const ENDPOINT_CONNECTIONS: &str = "watershed_endpoint_connections";
pub const ENDPOINT_CONNECTIONS_CLOSED: &str = "watershed_endpoint_connections_closed_total";

pub const LABEL_NODE: &str = "node";
pub const LABEL_PORT: &str = "port";
pub const LABEL_SOURCE: &str = "source";
pub const LABEL_PARTITION: &str = "partition";
pub const LABEL_ALERT: &str = "alert";
pub const LABEL_REASON: &str = "reason";

/// What each metric is a counter or gauge of, for `# HELP` (installed with the recorder).
const DESCRIPTIONS: &[(&str, Kind, &str)] = &[
    (RECORDS_IN, Kind::Counter, "Records a node received."),
    (
        RECORDS_OUT,
        Kind::Counter,
        "Records a node emitted, by output port.",
    ),
    (
        NODE_WATERMARK,
        Kind::Gauge,
        "A node's watermark (event time, Unix milliseconds).",
    ),
    (
        NODE_WATERMARK_LAG,
        Kind::Gauge,
        "How far a node's watermark is behind the clock.",
    ),
    (
        NODE_IDLE,
        Kind::Gauge,
        "1 while every input of the node is idle.",
    ),
    (
        PARTITION_WATERMARK,
        Kind::Gauge,
        "A source partition's watermark (Unix milliseconds).",
    ),
    (
        PARTITION_IDLE,
        Kind::Gauge,
        "1 while a source partition is idle (caught up for idle_timeout).",
    ),
    (
        PARTITION_SILENT,
        Kind::Gauge,
        "Time since a source partition's last record.",
    ),
    (
        LATE_RECORDS,
        Kind::Counter,
        "Records too late for every window, sent to `late`.",
    ),
    (
        DEAD_LETTER_RECORDS,
        Kind::Counter,
        "Records sent to `dead_letter`, with the reason.",
    ),
    (
        IDLE_TRANSITIONS,
        Kind::Counter,
        "Times a source partition became idle.",
    ),
    (
        CDC_SKIPPED_RECORDS,
        Kind::Counter,
        "Change records skipped (no configured table).",
    ),
    (
        ENRICH_LOOKUPS,
        Kind::Counter,
        "Events an enrichment join looked up.",
    ),
    (
        ENRICH_MATCHED,
        Kind::Counter,
        "Events that matched at least one reference row.",
    ),
    (
        ENRICH_MISSES,
        Kind::Counter,
        "Events that matched no reference row.",
    ),
    (
        ENRICH_GATE_BUFFERED,
        Kind::Gauge,
        "Events waiting at the gate for the reference snapshot.",
    ),
    (
        ENRICH_GATE_OPEN,
        Kind::Gauge,
        "1 once the reference snapshot is complete.",
    ),
    (REFERENCE_ROWS, Kind::Gauge, "Rows in a reference table."),
    (
        REFERENCE_STATE_BYTES,
        Kind::Gauge,
        "Bytes a reference table holds.",
    ),
    (ALERTS_FIRED, Kind::Counter, "Alerts fired."),
    (ALERT_ACTIVE, Kind::Gauge, "1 while an alert is active."),
    (
        BARRIERS_COMPLETED,
        Kind::Counter,
        "Checkpoint epochs completed.",
    ),
    (
        LAST_EPOCH,
        Kind::Gauge,
        "The last completed checkpoint epoch.",
    ),
    (
        CHECKPOINT_FAILURES,
        Kind::Counter,
        "Checkpoints that failed.",
    ),
    (
        CHECKPOINT_BYTES,
        Kind::Gauge,
        "Bytes the last checkpoint wrote.",
    ),
    (
        CHECKPOINT_DURATION_MS,
        Kind::Gauge,
        "How long the last checkpoint took, in milliseconds.",
    ),
    (
        CHECKPOINT_ALIGNMENT_MS,
        Kind::Gauge,
        "Barrier alignment time of the last checkpoint, in milliseconds.",
    ),
    (
        TRANSIENT_ERRORS,
        Kind::Counter,
        "Transient errors (each restarts the run from its latest checkpoint).",
    ),
    (
        RESTARTS,
        Kind::Counter,
        "Restarts from the latest checkpoint after a transient error.",
    ),
    (
        ENDPOINT_CONNECTIONS,
        Kind::Gauge,
        "Open connections to the HTTP endpoint.",
    ),
    (
        ENDPOINT_CONNECTIONS_CLOSED,
        Kind::Counter,
        "Endpoint connections closed by the endpoint, by reason.",
    ),
];

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}

/// Describes every metric to the installed recorder, so `/metrics` has `# HELP` lines.
pub fn describe_all() {
    for &(name, kind, help) in DESCRIPTIONS {
        match kind {
            Kind::Counter => metrics::describe_counter!(name, help),
            Kind::Gauge => metrics::describe_gauge!(name, help),
        }
    }
}
