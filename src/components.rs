//! The component registry: every kind of source, operator and sink a pipeline file can name,
//! each mapped to the configuration type that checks its block and builds it. Adding a
//! component is its folder (its configuration implementing `SourceConfig`, `OperatorConfig`
//! or `SinkConfig`, and the component itself) plus one line here.

use indexmap::IndexMap;

use crate::config::component::{OperatorConfig, SinkConfig, SourceConfig, section};
use crate::config::yaml::{EventTimeYaml, S, TableYaml};

section! {
    /// A source: where records enter. One kind block, plus what every source has.
    SourceYaml: SourceConfig {
        /// Column name -> type, in order: what a source of rows decodes.
        pub schema: Option<S<IndexMap<String, S<String>>>>,
        /// A change stream's tables, by port name: what a source of changes decodes.
        pub tables: Option<S<IndexMap<String, S<TableYaml>>>>,
        pub event_time: Option<S<EventTimeYaml>>,
        pub idle_timeout: Option<S<String>>,
        pub expected_interval: Option<S<String>>,
        pub parallelism: Option<S<usize>>,
    }
    kinds {
        generator: crate::sources::generator::GeneratorConfig,
        file: crate::sources::file::FileConfig,
        kafka: crate::sources::kafka::KafkaSourceConfig,
        postgres: crate::sources::postgres::config::PostgresSourceConfig,
    }
}

section! {
    /// An operator: inputs in, ports out. One kind block, plus what every operator has.
    OperatorYaml: OperatorConfig {
        pub inputs: Vec<S<String>>,
        pub parallelism: Option<S<usize>>,
    }
    kinds {
        window: crate::operators::window::config::WindowConfig,
        route: crate::operators::route::RouteConfig,
        enrich: crate::operators::enrich::config::EnrichConfig,
    }
}

section! {
    /// A sink: where results leave. One kind block, plus what every sink has.
    SinkYaml: SinkConfig {
        pub input: Option<S<String>>,
        #[serde(default)]
        pub inputs: Vec<S<String>>,
        /// Columns written, in order (default: all).
        pub columns: Option<Vec<S<String>>>,
    }
    kinds {
        file: crate::sinks::file::FileSinkConfig,
        stdout: crate::sinks::stdout::StdoutConfig,
        kafka: crate::sinks::kafka::KafkaSinkConfig,
        clickhouse: crate::sinks::clickhouse::ClickHouseSinkConfig,
        postgres: crate::sinks::postgres::PostgresSinkConfig,
    }
}
