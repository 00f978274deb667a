//! `nurture import`: the real binary loading CSV contacts and JSON Lines events into a fresh
//! embedded SQLite file (and once into PostgreSQL + Redis), with rejected-row reports, dedupe on
//! re-runs and resuming after a crash.

use crate::support::{fresh_database, redis_url, root, scratch_dir, stderr, stdout, unique};
use nurture::store::Store;
use sqlx::Row;
use std::path::PathBuf;
use std::process::{Command, Output};

/// A scratch project: `nurture.toml` points at the repository's journeys and templates; the
/// state goes to `nurture.db` in the same directory.
struct Project {
    dir: PathBuf,
    /// Environment for every run (production mode sets DATABASE_URL and REDIS_URL).
    env: Vec<(String, String)>,
    database_url: String,
}

impl Project {
    fn embedded() -> Project {
        let dir = scratch_dir("import");
        let path = |p: &str| serde_json::to_string(&root().join(p).display().to_string()).unwrap();
        std::fs::write(
            dir.join("nurture.toml"),
            format!(
                "journeys = {}\ntemplates = {}\nsales = {}\nscoring = {}\n",
                path("journeys"),
                path("templates"),
                path("sales.yaml"),
                path("scoring.yaml")
            ),
        )
        .unwrap();
        let db = dir.join("nurture.db");
        Project {
            env: vec![
                ("NURTURE_SQLITE_PATH".into(), db.display().to_string()),
                ("NURTURE_OUTBOX".into(), dir.join("outbox").display().to_string()),
            ],
            database_url: format!("sqlite://{}", db.display()),
            dir,
        }
    }

    async fn production() -> Project {
        let mut project = Project::embedded();
        project.database_url = fresh_database().await;
        project.env.push(("DATABASE_URL".into(), project.database_url.clone()));
        project.env.push(("REDIS_URL".into(), redis_url()));
        project.env.push(("NURTURE_NAMESPACE".into(), unique("nt_import")));
        project
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn import(&self, args: &[&str], extra_env: &[(&str, &str)]) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_nurture"));
        command
            .current_dir(&self.dir)
            .arg("import")
            .args(args)
            .env_remove("DATABASE_URL")
            .env_remove("REDIS_URL")
            .env("RUST_LOG", "warn");
        for (name, value) in &self.env {
            command.env(name, value);
        }
        for (name, value) in extra_env {
            command.env(name, value);
        }
        command.output().expect("the nurture binary runs")
    }

    fn exists(&self, name: &str) -> bool {
        self.dir.join(name).exists()
    }

    fn rejected(&self, name: &str) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.join(name))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }

    async fn store(&self) -> Store {
        Store::connect(&self.database_url, 1)
            .await
            .expect("open the imported database")
    }
}

fn report(output: &Output) -> String {
    format!("stdout:\n{}\nstderr:\n{}", stdout(output), stderr(output))
}

async fn count(store: &Store, sql: &str) -> i64 {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(&store.pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

async fn text(store: &Store, sql: &str) -> Option<String> {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_optional(&store.pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .and_then(|row| row.get::<Option<String>, _>(0))
}

async fn trait_of(store: &Store, user_id: &str, name: &str) -> Option<String> {
    text(
        store,
        &format!(
            "SELECT t.value FROM contact_traits t JOIN contacts c ON c.id = t.contact_id WHERE c.external_id = '{user_id}' AND t.name = '{name}'"
        ),
    )
    .await
}

const CONTACTS: &str = "user_id,email,phone,first_name,region,employees,zip,notes
u-ada, Ada@Example.com ,,Ada,Shanghai,250,02134,
,bo@example.com,138 0013 8000,Bo,\"Beijing, Haidian\",,,\"met at
the expo\"
,,,,NoId,3,,
u-cy,,,\"Cy \"\"the\"\" Third\",Shanghai,1.5,,
,not-an-email,,Dee,,,,
";

#[tokio::test]
async fn a_csv_of_contacts_is_imported_and_bad_rows_are_reported() {
    let project = Project::embedded();
    project.write("contacts.csv", CONTACTS);
    let output = project.import(&["contacts.csv"], &[]);
    assert_eq!(output.status.code(), Some(1), "{}", report(&output));
    assert!(
        stdout(&output).contains("contacts.csv: 5 read, 3 imported, 0 duplicates (already imported), 2 rejected"),
        "{}",
        report(&output)
    );
    assert!(
        stdout(&output).contains("contacts.csv.rejected.jsonl"),
        "{}",
        report(&output)
    );
    let rejected = project.rejected("contacts.csv.rejected.jsonl");
    assert_eq!(rejected.len(), 2, "{rejected:?}");
    // Line numbers are the file's: the quoted cell with a line break takes lines 3 and 4.
    assert_eq!(rejected[0]["line"], 5);
    assert_eq!(rejected[0]["field"], "user_id");
    assert_eq!(rejected[0]["row"], ",,,,NoId,3,,");
    assert_eq!(rejected[1]["line"], 7);
    assert_eq!(rejected[1]["field"], "email");
    assert!(
        rejected[1]["reason"].as_str().unwrap().contains("not-an-email"),
        "{rejected:?}"
    );
    assert!(!project.exists("contacts.csv.import-progress"));

    let store = project.store().await;
    assert_eq!(count(&store, "SELECT COUNT(*) FROM contacts").await, 3);
    assert_eq!(
        text(&store, "SELECT email FROM contacts WHERE external_id = 'u-ada'")
            .await
            .as_deref(),
        Some("ada@example.com"),
        "emails are normalised as the API does"
    );
    assert_eq!(
        text(&store, "SELECT phone FROM contacts WHERE email = 'bo@example.com'")
            .await
            .as_deref(),
        Some("+8613800138000"),
        "a contact with only an email and a phone is imported, phones in E.164"
    );
    assert_eq!(trait_of(&store, "u-ada", "employees").await.as_deref(), Some("250"));
    assert_eq!(trait_of(&store, "u-ada", "zip").await.as_deref(), Some("\"02134\""));
    assert_eq!(
        trait_of(&store, "u-ada", "notes").await,
        None,
        "empty cells are skipped"
    );
    assert_eq!(trait_of(&store, "u-cy", "employees").await.as_deref(), Some("1.5"));
    assert_eq!(
        trait_of(&store, "u-cy", "first_name").await.as_deref(),
        Some(r#""Cy \"the\" Third""#)
    );
    assert_eq!(
        text(
            &store,
            "SELECT t.value FROM contact_traits t JOIN contacts c ON c.id = t.contact_id WHERE c.email = 'bo@example.com' AND t.name = 'notes'"
        )
        .await
        .as_deref(),
        Some(r#""met at\nthe expo""#)
    );
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM events WHERE name = 'Identify'").await,
        3
    );
}

#[tokio::test]
async fn a_jsonl_of_events_is_imported_and_enrols_contacts_like_the_api() {
    let project = Project::embedded();
    project.write(
        "events.jsonl",
        r#"{"type": "identify", "userId": "u1", "traits": {"email": "u1@example.com", "first_name": "Uno"}}
{"userId": "u1", "event": "Whitepaper Downloaded", "properties": {"topic": "automation"}, "timestamp": "2026-01-05T10:00:00Z"}

{"userId": "u2", "traits": {"email": "u2@example.com"}}
{"type": "track", "userId": "u2"}
not json
{"type": "page", "anonymousId": "anon-9", "name": "Pricing", "messageId": "page-9"}
"#,
    );
    let output = project.import(&["events.jsonl", "--quiet"], &[]);
    assert_eq!(output.status.code(), Some(1), "{}", report(&output));
    assert!(
        stdout(&output).contains("events.jsonl: 6 read, 4 imported, 0 duplicates (already imported), 2 rejected"),
        "blank lines are skipped: {}",
        report(&output)
    );
    let rejected = project.rejected("events.jsonl.rejected.jsonl");
    assert_eq!(rejected.len(), 2, "{rejected:?}");
    assert_eq!(rejected[0]["line"], 5);
    assert_eq!(rejected[0]["field"], "event");
    assert_eq!(rejected[0]["reason"], "a track message needs an `event` name");
    assert_eq!(rejected[0]["row"]["userId"], "u2");
    assert_eq!(rejected[1]["line"], 6);
    assert_eq!(rejected[1]["field"], serde_json::Value::Null);
    assert_eq!(rejected[1]["row"], "not json");

    let store = project.store().await;
    assert_eq!(count(&store, "SELECT COUNT(*) FROM contacts").await, 3);
    assert_eq!(
        text(&store, "SELECT email FROM contacts WHERE external_id = 'u2'")
            .await
            .as_deref(),
        Some("u2@example.com"),
        "a line with traits and no type is an identify"
    );
    assert_eq!(trait_of(&store, "u1", "first_name").await.as_deref(), Some("\"Uno\""));
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM events e JOIN contacts c ON c.id = e.contact_id WHERE c.external_id = 'u1' AND e.name = 'Whitepaper Downloaded' AND e.kind = 'track'"
        )
        .await,
        1,
        "a line with an event and no type is a track"
    );
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM events WHERE message_id = 'page-9' AND name = 'Page Viewed'"
        )
        .await,
        1,
        "a line's own messageId is kept"
    );
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM enrollments e JOIN contacts c ON c.id = e.contact_id WHERE c.external_id = 'u1' AND e.journey_id = 'whitepaper-nurture'"
        )
        .await,
        1,
        "an imported track event enrols the contact as an API event does"
    );
}

#[tokio::test]
async fn importing_a_file_again_imports_nothing_new() {
    let project = Project::embedded();
    let lines = [
        r#"{"userId": "a", "event": "Signed Up"}"#,
        r#"{"userId": "b", "event": "Signed Up", "messageId": "own-b"}"#,
        r#"{"userId": "c", "traits": {"plan": "pro"}}"#,
        r#"{"userId": "d", "event": "Signed Up"}"#,
        r#"{"userId": "e", "event": "Signed Up"}"#,
    ];
    project.write("signups.jsonl", &format!("{}\n", lines[..3].join("\n")));
    let first = project.import(&["signups.jsonl"], &[]);
    assert_eq!(first.status.code(), Some(0), "{}", report(&first));
    assert!(
        stdout(&first).contains("3 read, 3 imported, 0 duplicates (already imported), 0 rejected"),
        "{}",
        report(&first)
    );
    assert!(
        !project.exists("signups.jsonl.rejected.jsonl"),
        "no report when nothing is rejected"
    );

    let again = project.import(&["signups.jsonl"], &[]);
    assert_eq!(again.status.code(), Some(0), "{}", report(&again));
    assert!(
        stdout(&again).contains("3 read, 0 imported, 3 duplicates (already imported), 0 rejected"),
        "{}",
        report(&again)
    );
    let store = project.store().await;
    assert_eq!(count(&store, "SELECT COUNT(*) FROM events").await, 3);
    assert_eq!(count(&store, "SELECT COUNT(*) FROM contacts").await, 3);
    drop(store);

    // The file grew (say, a fuller export): only the new lines are imported.
    project.write("signups.jsonl", &format!("{}\n", lines.join("\n")));
    let grown = project.import(&["signups.jsonl"], &[]);
    assert_eq!(grown.status.code(), Some(0), "{}", report(&grown));
    assert!(
        stdout(&grown).contains("5 read, 2 imported, 3 duplicates (already imported), 0 rejected"),
        "{}",
        report(&grown)
    );
    let store = project.store().await;
    assert_eq!(count(&store, "SELECT COUNT(*) FROM events").await, 5);
}

#[tokio::test]
async fn an_interrupted_import_resumes_where_it_stopped() {
    let project = Project::embedded();
    let mut csv = String::from("email,first_name\n");
    for i in 1..=7 {
        if i == 2 {
            csv.push_str("not-an-email,Two\n");
        } else {
            csv.push_str(&format!("p{i}@example.com,P{i}\n"));
        }
    }
    project.write("people.csv", &csv);
    // A crash once two batches of two rows are committed.
    let crashed = project.import(
        &["people.csv", "--batch-size", "2"],
        &[("NURTURE_TEST_IMPORT_EXIT_AFTER_BATCHES", "2")],
    );
    assert_eq!(crashed.status.code(), Some(99), "{}", report(&crashed));
    assert!(project.exists("people.csv.import-progress"));
    let store = project.store().await;
    assert_eq!(count(&store, "SELECT COUNT(*) FROM contacts").await, 3);
    drop(store);

    let resumed = project.import(&["people.csv", "--batch-size", "2"], &[]);
    assert_eq!(resumed.status.code(), Some(1), "{}", report(&resumed));
    assert!(
        stderr(&resumed).contains("resuming people.csv after line 5"),
        "{}",
        report(&resumed)
    );
    assert!(
        stdout(&resumed).contains("people.csv: 7 read, 6 imported, 0 duplicates (already imported), 1 rejected"),
        "the committed rows are not sent again, and the totals cover the whole file: {}",
        report(&resumed)
    );
    assert!(!project.exists("people.csv.import-progress"), "deleted when complete");
    let rejected = project.rejected("people.csv.rejected.jsonl");
    assert_eq!(rejected.len(), 1, "reported once: {rejected:?}");
    assert_eq!(rejected[0]["line"], 3);
    let store = project.store().await;
    assert_eq!(count(&store, "SELECT COUNT(*) FROM contacts").await, 6);
    drop(store);

    // A checkpoint for a file that changed before it is not trusted: the import starts over
    // and the message ids skip what is stored.
    let crashed = project.import(
        &["people.csv", "--batch-size", "2"],
        &[("NURTURE_TEST_IMPORT_EXIT_AFTER_BATCHES", "1")],
    );
    assert_eq!(crashed.status.code(), Some(99), "{}", report(&crashed));
    project.write("people.csv", &csv.replace("not-an-email", "two@example.com"));
    let restarted = project.import(&["people.csv"], &[]);
    assert_eq!(restarted.status.code(), Some(0), "{}", report(&restarted));
    assert!(stderr(&restarted).contains("changed since"), "{}", report(&restarted));
    assert!(
        stdout(&restarted).contains("people.csv: 7 read, 1 imported, 6 duplicates (already imported), 0 rejected"),
        "{}",
        report(&restarted)
    );
    assert!(!project.exists("people.csv.rejected.jsonl"));
}

#[test]
fn usage_errors_exit_2() {
    let project = Project::embedded();
    project.write("notes.txt", "hello\n");
    let output = project.import(&["notes.txt"], &[]);
    assert_eq!(output.status.code(), Some(2), "{}", report(&output));
    assert!(stderr(&output).contains("--format"), "{}", report(&output));
    let output = project.import(&["missing.csv"], &[]);
    assert_eq!(output.status.code(), Some(2), "{}", report(&output));
    assert!(stderr(&output).contains("missing.csv"), "{}", report(&output));
    project.write("twice.csv", "email,Email\na@example.com,b@example.com\n");
    let output = project.import(&["twice.csv"], &[]);
    assert_eq!(output.status.code(), Some(2), "{}", report(&output));
    assert!(stderr(&output).contains("twice"), "{}", report(&output));
}

#[tokio::test]
async fn import_into_postgres_and_redis() {
    let project = Project::production().await;
    project.write("contacts.csv", CONTACTS);
    project.write(
        "events.jsonl",
        r#"{"userId": "u-ada", "event": "Whitepaper Downloaded", "properties": {"topic": "automation"}}
"#,
    );
    let contacts = project.import(&["contacts.csv"], &[]);
    assert_eq!(contacts.status.code(), Some(1), "{}", report(&contacts));
    assert!(
        stdout(&contacts).contains("5 read, 3 imported, 0 duplicates (already imported), 2 rejected"),
        "{}",
        report(&contacts)
    );
    let events = project.import(&["events.jsonl"], &[]);
    assert_eq!(events.status.code(), Some(0), "{}", report(&events));
    let again = project.import(&["events.jsonl"], &[]);
    assert!(
        stdout(&again).contains("1 read, 0 imported, 1 duplicates"),
        "{}",
        report(&again)
    );
    assert!(!project.exists("nurture.db"), "nothing went to SQLite");

    let store = project.store().await;
    assert_eq!(count(&store, "SELECT COUNT(*) FROM contacts").await, 3);
    assert_eq!(
        text(&store, "SELECT phone FROM contacts WHERE email = 'bo@example.com'")
            .await
            .as_deref(),
        Some("+8613800138000")
    );
    assert_eq!(trait_of(&store, "u-ada", "employees").await.as_deref(), Some("250"));
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM enrollments e JOIN contacts c ON c.id = e.contact_id WHERE c.external_id = 'u-ada' AND e.journey_id = 'whitepaper-nurture'"
        )
        .await,
        1
    );
}
