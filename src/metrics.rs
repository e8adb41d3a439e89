//! Metric names (Prometheus style: `watershed_<name>_<unit>[_total]`) and the label keys
//! used with them. Components take handles once at start and update them per batch.

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
