//! ClickHouse's HTTP interface as the sink uses it: statements (`POST /` with the SQL as the
//! body), inserts (`INSERT INTO … FORMAT JSONEachRow` in the URL, the rows as the body), the
//! server's version, and what a failure means.
//!
//! A failure is `Transient` (connection refused or reset, a timeout, 5xx without an error
//! code, or a code of overload or lost connectivity: too many parts, memory limit, network
//! errors) and worth retrying, or `Definite` (every other error code: unknown table or
//! column, a value the column cannot take, authentication, syntax): retrying cannot help and
//! the message says what is wrong. ClickHouse 18.16 answers most errors with 500 and
//! no error-code header, so the code is read from the body (`Code: 60, …`).
//!
//! Credentials travel in an `Authorization: Basic` header (every version reads it) and never
//! appear in messages: a message names the server by its URL without user information.

use std::time::Duration;

use base64::Engine;

/// Why a request failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChError {
    /// Worth retrying: the server may be restarting or overloaded.
    #[error("{0}")]
    Transient(String),
    /// Retrying cannot help: the statement or the data is wrong for this table.
    #[error("{0}")]
    Definite(String),
}

impl ChError {
    pub fn is_transient(&self) -> bool {
        matches!(self, ChError::Transient(_))
    }
}

/// Error codes of failures that may pass: the server is overloaded, restarting or cut off.
/// Every other code is a statement or a value the server refuses, and will refuse again.
const TRANSIENT_CODES: &[u32] = &[
    3,    // UNEXPECTED_END_OF_FILE (the request was cut off)
    159,  // TIMEOUT_EXCEEDED
    202,  // TOO_MANY_SIMULTANEOUS_QUERIES
    209,  // SOCKET_TIMEOUT
    210,  // NETWORK_ERROR
    241,  // MEMORY_LIMIT_EXCEEDED
    242,  // TABLE_IS_READ_ONLY (a replica lost its coordination)
    252,  // TOO_MANY_PARTS
    285,  // TOO_FEW_LIVE_REPLICAS
    319,  // UNKNOWN_STATUS_OF_INSERT
    425,  // SYSTEM_ERROR
    999,  // KEEPER_EXCEPTION
    1000, // POCO_EXCEPTION
];

/// The server's version, to choose features (`DateTime64`, `is_deleted`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServerVersion {
    pub major: u32,
    pub minor: u32,
}

impl ServerVersion {
    /// Parses `SELECT version()`'s answer (`18.16.1`, `26.9.2.1`).
    pub fn parse(text: &str) -> Option<ServerVersion> {
        let mut parts = text.trim().split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(ServerVersion { major, minor })
    }

    /// `DateTime64` (20.1 on).
    pub fn has_datetime64(self) -> bool {
        self.major >= 20
    }

    /// `ReplacingMergeTree(version, is_deleted)` (23.2 on): deleted rows leave `FINAL`.
    pub fn has_is_deleted(self) -> bool {
        (self.major, self.minor) >= (23, 2)
    }
}

/// A connection to one ClickHouse server over HTTP.
#[derive(Clone)]
pub struct ClickHouse {
    agent: ureq::Agent,
    /// `http(s)://host:port`, without a trailing slash or user information.
    base: String,
    authorization: Option<String>,
}

impl std::fmt::Debug for ClickHouse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouse")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl ClickHouse {
    /// A client of the server at `url` (`http://host:8123`); `timeout` bounds each request.
    pub fn new(
        url: &str,
        user: Option<&str>,
        password: Option<&str>,
        timeout: Duration,
    ) -> ClickHouse {
        let tls = ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::NativeTls)
            .build();
        let config = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .timeout_connect(Some(timeout.min(Duration::from_secs(10))))
            .build();
        let authorization = user.map(|u| {
            let pair = format!("{u}:{}", password.unwrap_or(""));
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )
        });
        ClickHouse {
            agent: config.into(),
            base: url.trim_end_matches('/').to_string(),
            authorization,
        }
    }

    /// The server's URL, for messages.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// Runs `sql` and returns its output.
    pub fn query(&self, sql: &str) -> Result<String, ChError> {
        self.post(None, sql.as_bytes(), sql)
    }

    /// Inserts JSONEachRow `rows` into `table` (`db.table`, quoted).
    pub fn insert(&self, table: &str, rows: &[u8]) -> Result<(), ChError> {
        let statement = format!("INSERT INTO {table} FORMAT JSONEachRow");
        self.post(Some(&statement), rows, &statement).map(|_| ())
    }

    /// `SELECT version()`.
    pub fn version(&self) -> Result<ServerVersion, ChError> {
        let text = self.query("SELECT version()")?;
        ServerVersion::parse(&text).ok_or_else(|| {
            ChError::Definite(format!(
                "{} answered `SELECT version()` with `{}`: not a ClickHouse server",
                self.base,
                text.trim()
            ))
        })
    }

    /// POSTs `body` (with `query` as the URL's `query` parameter, if given).
    fn post(&self, query: Option<&str>, body: &[u8], what: &str) -> Result<String, ChError> {
        let mut request = self.agent.post(&self.base);
        if let Some(q) = query {
            request = request.query("query", q);
        }
        if let Some(a) = &self.authorization {
            request = request.header("Authorization", a);
        }
        let response = request.send(body).map_err(|e| {
            ChError::Transient(format!("ClickHouse at {} did not answer: {e}", self.base))
        })?;
        let status = response.status().as_u16();
        let text = response
            .into_body()
            .with_config()
            .limit(64 * 1024 * 1024)
            .read_to_string()
            .map_err(|e| {
                ChError::Transient(format!(
                    "ClickHouse at {}: reading its answer: {e}",
                    self.base
                ))
            })?;
        if status == 200 {
            return Ok(text);
        }
        Err(classify(status, &text, &self.base, what))
    }
}

/// What an answer other than 200 means.
fn classify(status: u16, body: &str, base: &str, what: &str) -> ChError {
    let message = body.trim();
    let message = message.get(..2000).unwrap_or(message);
    let what = what.get(..200).unwrap_or(what);
    let text = format!("ClickHouse at {base} refused `{what}` (HTTP {status}): {message}");
    let code = error_code(body);
    let definite = match code {
        Some(c) => !TRANSIENT_CODES.contains(&c),
        None => (400..500).contains(&status) && status != 408 && status != 429,
    };
    if definite {
        ChError::Definite(text)
    } else {
        ChError::Transient(text)
    }
}

/// The code of a ClickHouse exception text (`Code: 60, e.displayText() = …` or `Code: 60.
/// DB::Exception: …`).
pub fn error_code(body: &str) -> Option<u32> {
    let at = body.find("Code: ")? + "Code: ".len();
    let digits: String = body[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// `name` as a ClickHouse identifier: back-quoted, with back quotes and backslashes escaped.
pub fn quote_ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('`');
    for c in name.chars() {
        if c == '`' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('`');
    out
}

/// `s` as a ClickHouse string literal.
pub fn quote_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_tell_features() {
        let old = ServerVersion::parse("18.16.1\n").unwrap();
        assert!(!old.has_datetime64() && !old.has_is_deleted());
        let new = ServerVersion::parse("26.9.2.1").unwrap();
        assert!(new.has_datetime64() && new.has_is_deleted());
        assert_eq!(ServerVersion::parse("not a version"), None);
    }

    #[test]
    fn errors_are_told_apart_by_their_code_then_their_status() {
        let unknown_table = "Code: 60, e.displayText() = DB::Exception: Table default.x doesn't exist., e.what() = DB::Exception\n";
        let too_long = "Code: 131. DB::Exception: Too large value for FixedString(2).";
        assert!(!classify(500, too_long, "http://h", "INSERT").is_transient());
        assert!(matches!(
            classify(500, unknown_table, "http://h", "INSERT"),
            ChError::Definite(m) if m.contains("doesn't exist")
        ));
        let too_many_parts = "Code: 252. DB::Exception: Too many parts (300).";
        assert!(classify(500, too_many_parts, "http://h", "INSERT").is_transient());
        assert!(classify(503, "overloaded", "http://h", "INSERT").is_transient());
        assert!(!classify(403, "denied", "http://h", "INSERT").is_transient());
        assert!(classify(429, "slow down", "http://h", "INSERT").is_transient());
        assert_eq!(error_code("Code: 1"), Some(1));
        assert_eq!(error_code("no code"), None);
        assert_eq!(error_code("Code: x"), None);
    }

    #[test]
    fn identifiers_and_strings_are_quoted() {
        assert_eq!(quote_ident("a`b\\c"), "`a\\`b\\\\c`");
        assert_eq!(quote_str("it's"), "'it\\'s'");
    }
}
