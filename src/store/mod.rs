//! The engine's state in PostgreSQL (production) or SQLite (embedded), through one code path:
//! sqlx's `Any` driver, portable SQL, times as milliseconds. One file per aggregate.

pub mod backlog;
pub mod contacts;
pub mod controls;
pub mod effects;
pub mod email;
pub mod enrollments;
pub mod guardrails;
mod health;
pub mod identities;
pub mod inbox;
pub mod reports;
pub mod sales;
pub mod scores;
pub mod sms;
mod statistics;

use chrono::{DateTime, TimeZone, Utc};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};
use std::time::Duration;

pub type Tx<'a> = sqlx::Transaction<'a, sqlx::Any>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is not readable: {0}")]
    Corrupt(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Postgres,
    Sqlite,
}

#[derive(Clone, Debug)]
pub struct Store {
    pub pool: AnyPool,
    pub kind: Kind,
}

static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");
static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// The PostgreSQL URL with this process's defaults for what it does not say itself.
/// - `statement-cache-capacity=1024`: batches prepare statements in a few padded sizes each
///   (see `padded_len`); keep them all.
/// - `sslmode=disable` for a server on this machine (a loopback address or a socket): sqlx's
///   default, `prefer`, encrypts loopback traffic, which protects nothing and cost a quarter of
///   the events API's CPU on both sides. A URL that names any `sslmode` keeps it.
fn postgres_url(given: &str) -> String {
    let mut url = given.to_string();
    let mut add = |setting: &str| {
        let separator = if url.contains('?') { '&' } else { '?' };
        url = format!("{url}{separator}{setting}");
    };
    if !given.contains("statement-cache-capacity") {
        add("statement-cache-capacity=1024");
    }
    if !given.contains("sslmode") && postgres_is_local(given) {
        add("sslmode=disable");
    }
    url
}

/// Whether a PostgreSQL URL names a server on this machine.
fn postgres_is_local(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    let host = match host_port.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => host_port.split(':').next().unwrap_or_default(),
    };
    let host = if host.is_empty() {
        // The host may be a query parameter instead; none at all is the default socket.
        let query = rest.split_once('?').map_or("", |(_, query)| query);
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix("host="))
            .unwrap_or("/")
    } else {
        host
    };
    // A path is a Unix socket, local by definition.
    host.starts_with('/') || host.starts_with("%2F") || host == "localhost" || host == "::1" || host.starts_with("127.")
}

impl Store {
    /// Connects to `url` (`postgres://...` or `sqlite://...`).
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let kind = if url.starts_with("postgres") {
            Kind::Postgres
        } else {
            Kind::Sqlite
        };
        let own_page_cost = url.contains("random_page_cost");
        let options = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(30))
            // sqlx pings every connection it hands out: a round trip before each batch and
            // ingest group. A connection that died is found by its first statement instead,
            // which fails like any statement (and the callers retry or the reconciler repairs).
            .test_before_acquire(false)
            .after_connect(move |connection, _| {
                Box::pin(async move {
                    if kind == Kind::Sqlite {
                        // Several writers share one file: wait for the lock instead of failing.
                        connection.execute("PRAGMA busy_timeout = 10000").await?;
                        connection.execute("PRAGMA foreign_keys = ON").await?;
                        connection.execute("PRAGMA synchronous = NORMAL").await?;
                    } else {
                        crate::nodelay::disable_nagle_on_open_sockets();
                        // The rows a step batch touches are in memory (and on SSDs when not):
                        // priced at the default 4x a sequential read, a few hundred primary key
                        // probes looked dearer than scanning a whole growing table. A URL that
                        // sets it (`options=-c random_page_cost=...`) keeps its own.
                        if !own_page_cost {
                            connection.execute("SET random_page_cost = 1.1").await?;
                        }
                    }
                    Ok(())
                })
            });
        let url = if kind == Kind::Postgres {
            postgres_url(url)
        } else {
            url.to_string()
        };
        let pool = options.connect(&url).await?;
        if kind == Kind::Sqlite {
            pool.execute("PRAGMA journal_mode = WAL").await?;
        }
        Ok(Store { pool, kind })
    }

    /// Applies the schema migrations of this database kind.
    pub async fn migrate(&self) -> Result<()> {
        match self.kind {
            Kind::Postgres => POSTGRES_MIGRATIONS.run(&self.pool).await?,
            Kind::Sqlite => SQLITE_MIGRATIONS.run(&self.pool).await?,
        }
        Ok(())
    }

    pub async fn begin(&self) -> Result<Tx<'static>> {
        Ok(self.pool.begin().await?)
    }

    /// Records a compiled journey version; returns whether it was new.
    pub async fn save_journey_version(
        &self,
        journey_id: &str,
        version: &str,
        file: &str,
        source: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let result = sqlx::query(
            "INSERT INTO journey_versions (journey_id, version, file, source, loaded_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(journey_id)
        .bind(version)
        .bind(file)
        .bind(source)
        .bind(ms(now))
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Takes or renews the lease `name` for `holder` until `until`; false while another holder's
    /// lease runs. Used so one process at a time loads the timer windows.
    pub async fn take_lease(&self, name: &str, holder: &str, now: DateTime<Utc>, until: DateTime<Utc>) -> Result<bool> {
        let result = sqlx::query(
            "INSERT INTO leases (name, holder, until) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until
             WHERE leases.until < $4 OR leases.holder = excluded.holder",
        )
        .bind(name)
        .bind(holder)
        .bind(ms(until))
        .bind(ms(now))
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }
}

/// The source text of a stored journey version, for enrollments still on it.
pub async fn journey_source(
    connection: &mut sqlx::AnyConnection,
    journey_id: &str,
    version: &str,
) -> Result<Option<(String, String)>> {
    let row = sqlx::query("SELECT file, source FROM journey_versions WHERE journey_id = $1 AND version = $2")
        .bind(journey_id)
        .bind(version)
        .fetch_optional(connection)
        .await?;
    Ok(row.map(|r| (r.get::<String, _>(0), r.get::<String, _>(1))))
}

/// Most bind parameters one statement carries: under SQLite's 32,766 and PostgreSQL's 65,535.
pub(crate) const MAX_PARAMS: usize = 30_000;

/// Most values one `IN (...)` list carries; padded lists stay within both databases' limits.
pub(crate) const IN_CHUNK: usize = 8_192;

/// The length an `IN` list of `count` values is padded to: the next power of two. Statements
/// then come in a few sizes, each prepared once per connection and planned once, instead of a
/// new statement for every batch size (parsing and planning were a third of PostgreSQL's time).
/// Statement text for the connection's database. On SQLite, `$1, $2, ...` written in order,
/// each once, become anonymous `?`s. Why: SQLite finds a numbered parameter's name with a
/// linear scan, and sqlx asks for every parameter's name when it binds, so a statement with n
/// numbered parameters cost O(n²) to bind — with a batch's thousands of parameters, that was
/// 40 % of the embedded mode's CPU. Anonymous parameters bind in O(1). Text whose numbers are
/// out of order or repeated is left as it is (correct, only slower).
pub(crate) fn for_dialect(connection: &sqlx::AnyConnection, sql: String) -> String {
    if connection.backend_name() != "SQLite" {
        return sql;
    }
    anonymous_parameters(&sql).unwrap_or(sql)
}

/// `sql` with `$1, $2, ...` replaced by `?`, if they appear in order, each once.
fn anonymous_parameters(sql: &str) -> Option<String> {
    let bytes = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let (mut expected, mut copied, mut i) = (1usize, 0usize, 0usize);
    while i < bytes.len() {
        if bytes[i] == b'$' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit) {
            let start = i + 1;
            let mut end = start;
            while end < bytes.len() && bytes[end].is_ascii_digit() {
                end += 1;
            }
            if sql[start..end].parse::<usize>().ok()? != expected {
                return None;
            }
            expected += 1;
            out.push_str(&sql[copied..i]);
            out.push('?');
            copied = end;
            i = end;
        } else {
            i += 1;
        }
    }
    out.push_str(&sql[copied..]);
    Some(out)
}

pub(crate) fn padded_len(count: usize) -> usize {
    count.max(1).next_power_of_two()
}

/// `values`, then its last value repeated up to `padded_len`: what an `IN` list binds.
/// A repeated value matches the same rows again, which an `IN` list ignores.
pub(crate) fn padded<T>(values: &[T]) -> impl Iterator<Item = &T> {
    let extra = padded_len(values.len()) - values.len();
    values.iter().chain(values.last().into_iter().cycle().take(extra))
}

/// Lets the transaction `connection` is in commit without waiting for PostgreSQL to flush it to
/// disk (`SET LOCAL`: this transaction only). For writes a crash may lose because something
/// durable repeats them (see the callers); nothing to do on SQLite, whose commits in WAL mode
/// with `synchronous = NORMAL` do not wait for the disk either.
pub(crate) async fn commit_without_waiting_for_disk(connection: &mut sqlx::AnyConnection) -> Result<()> {
    if connection.backend_name() != "SQLite" {
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(connection)
            .await?;
    }
    Ok(())
}

/// `$first, $first+1, ...`: `count` placeholders for an `IN (...)` list.
pub(crate) fn placeholders(first: usize, count: usize) -> String {
    let mut text = String::with_capacity(count * 6);
    for n in first..first + count {
        if n > first {
            text.push_str(", ");
        }
        text.push('$');
        text.push_str(&n.to_string());
    }
    text
}

/// `(...), (...)`: `rows` tuples of `columns.len()` placeholders, numbered from `first`. A column
/// named by a type is cast to it (`CAST($n AS BIGINT)`), which `UPDATE ... FROM (VALUES ...)`
/// needs on PostgreSQL to type NULLs; an empty name leaves the placeholder bare.
pub(crate) fn value_rows(first: usize, rows: usize, columns: &[&str]) -> String {
    let mut text = String::with_capacity(rows * columns.len() * 8);
    let mut n = first;
    for row in 0..rows {
        if row > 0 {
            text.push_str(", ");
        }
        text.push('(');
        for (i, cast) in columns.iter().enumerate() {
            if i > 0 {
                text.push_str(", ");
            }
            if cast.is_empty() {
                text.push_str(&format!("${n}"));
            } else {
                text.push_str(&format!("CAST(${n} AS {cast})"));
            }
            n += 1;
        }
        text.push(')');
    }
    text
}

/// Rows per statement, a power of two, for statements whose rows are padded like `IN` lists
/// (`padded`: the last row repeated). Only for statements where a repeated row changes
/// nothing: `UPDATE ... FROM (VALUES ...)` (a target row is updated once) and
/// `INSERT ... ON CONFLICT DO NOTHING` (the copy conflicts with the original).
pub(crate) fn padded_rows_per_statement(columns: usize) -> usize {
    let rows = rows_per_statement(columns);
    if rows.is_power_of_two() {
        rows
    } else {
        rows.next_power_of_two() / 2
    }
}

/// Rows per statement when each row binds `columns` parameters.
pub(crate) fn rows_per_statement(columns: usize) -> usize {
    (MAX_PARAMS / columns.max(1)).max(1)
}

/// Records `(source, messageId, received at)` of many messages; returns the pairs seen for the
/// first time (a replay, or a second copy in the same list, is not returned).
pub async fn received_fresh(
    tx: &mut Tx<'_>,
    messages: &[(&str, &str, i64)],
) -> Result<std::collections::HashSet<(String, String)>> {
    let mut fresh = std::collections::HashSet::with_capacity(messages.len());
    for chunk in messages.chunks(padded_rows_per_statement(3)) {
        let sql = format!(
            "INSERT INTO received_messages (source, message_id, received_at) VALUES {} ON CONFLICT DO NOTHING RETURNING source, message_id",
            value_rows(1, padded_len(chunk.len()), &[""; 3])
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(for_dialect(tx, sql)));
        for (source, id, at) in padded(chunk) {
            query = query.bind(*source).bind(*id).bind(*at);
        }
        for row in query.fetch_all(&mut **tx).await? {
            fresh.insert((row.try_get(0)?, row.try_get(1)?));
        }
    }
    Ok(fresh)
}

/// How long a write of something that already happened outside (a message sent) keeps being
/// tried while the database cannot be reached (`write_through_outage`).
pub const OUTAGE_RETRY: Duration = Duration::from_secs(60);

/// Runs `write` on a fresh connection of `pool`, and again every 250 ms while it fails, for up
/// to `within` (`Duration::ZERO`: once). For what records a fact outside the database (a
/// message sent): lost to a short outage, it would be done again once its claim ran out.
pub async fn write_through_outage<T, F, Fut>(pool: &AnyPool, within: Duration, mut write: F) -> Result<T>
where
    F: FnMut(sqlx::pool::PoolConnection<sqlx::Any>) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let started = std::time::Instant::now();
    loop {
        let attempt = match pool.acquire().await {
            Ok(connection) => write(connection).await,
            Err(error) => Err(error.into()),
        };
        match attempt {
            Err(_) if started.elapsed() < within => tokio::time::sleep(Duration::from_millis(250)).await,
            written => return written,
        }
    }
}

pub fn ms(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

pub fn from_ms(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

pub(crate) fn opt_ms(row: &AnyRow, column: &str) -> Option<DateTime<Utc>> {
    row.try_get::<Option<i64>, _>(column).ok().flatten().map(from_ms)
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_postgres_goes_without_tls_unless_the_url_says() {
        let local = [
            "postgres://postgres@127.0.0.1:5432/test",
            "postgres://u:p@localhost/db",
            "postgresql://[::1]:5432/db",
            "postgres:///db",
            "postgres:///db?host=/run/postgresql",
        ];
        for url in local {
            assert!(super::postgres_url(url).contains("sslmode=disable"), "{url}");
        }
        let remote = [
            "postgres://u@db.example.com/db",
            "postgres://u@10.0.0.5:5432/db",
            "postgres:///db?host=db.internal",
            "postgres://u@127.0.0.1/db?sslmode=require",
        ];
        for url in remote {
            assert!(!super::postgres_url(url).contains("sslmode=disable"), "{url}");
        }
        assert_eq!(
            super::postgres_url("postgres://u@h/db?sslmode=require"),
            "postgres://u@h/db?sslmode=require&statement-cache-capacity=1024"
        );
    }

    #[test]
    fn in_lists_are_padded_to_a_power_of_two_with_their_last_value() {
        assert_eq!(super::padded_len(0), 1);
        assert_eq!(super::padded_len(5), 8);
        assert_eq!(super::padded_len(8), 8);
        let values = [3, 1, 4, 1, 5];
        let padded: Vec<i32> = super::padded(&values).copied().collect();
        assert_eq!(padded, [3, 1, 4, 1, 5, 5, 5, 5]);
        assert_eq!(super::placeholders(2, 3), "$2, $3, $4");
        assert_eq!(
            super::value_rows(1, 2, &["BIGINT", ""]),
            "(CAST($1 AS BIGINT), $2), (CAST($3 AS BIGINT), $4)"
        );
    }

    #[tokio::test]
    async fn an_embedded_store_has_one_connection() {
        let dir = std::env::temp_dir().join(format!("nurture-pool-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.join("p.db").display());
        let store = super::Store::connect(&url, 1).await.unwrap();
        let first = store.pool.acquire().await.unwrap();
        let second = tokio::time::timeout(std::time::Duration::from_millis(300), store.pool.acquire()).await;
        assert!(
            second.is_err(),
            "a second connection was handed out: size {}",
            store.pool.size()
        );
        drop(first);
    }

    #[test]
    fn numbered_parameters_in_order_become_anonymous_on_sqlite() {
        use super::anonymous_parameters;
        assert_eq!(
            anonymous_parameters("UPDATE t SET a = $1 WHERE id IN ($2, $3) AND b = 'x$'").as_deref(),
            Some("UPDATE t SET a = ? WHERE id IN (?, ?) AND b = 'x$'")
        );
        assert_eq!(anonymous_parameters("SELECT $2, $1"), None);
        assert_eq!(anonymous_parameters("SELECT $1 WHERE a = $1"), None);
        assert_eq!(anonymous_parameters("SELECT 1").as_deref(), Some("SELECT 1"));
    }
}
