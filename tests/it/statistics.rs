//! Planner statistics for tables that grow fast (`store/statistics.rs`): a table that more than
//! doubled since its last analyze is analyzed by the process, once.

use crate::support::*;
use nurture::store::Store;
use std::time::Duration;

async fn store(mode: Mode) -> Store {
    let url = match mode {
        Mode::Production => fresh_database().await,
        Mode::Embedded => format!(
            "sqlite://{}?mode=rwc",
            scratch_dir("statistics").join("nurture.db").display()
        ),
    };
    let store = Store::connect(&url, 2).await.expect("connect");
    store.migrate().await.expect("migrate");
    store
}

/// 1,500 contacts in one transaction: more than `MIN_ROWS`, into an empty table.
async fn add_contacts(store: &Store) {
    let mut tx = store.begin().await.unwrap();
    for _ in 0..1_500 {
        sqlx::query("INSERT INTO contacts (created_at) VALUES (0)")
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_that_grew_is_analyzed_once_in_postgres() {
    let store = store(Mode::Production).await;
    add_contacts(&store).await;
    // PostgreSQL counts the changes a moment after the commit (its statistics are flushed at
    // most once a second per connection).
    let analyzed = eventually("contacts analyzed", Duration::from_secs(15), || async {
        let tables = store.analyze_grown_tables().await.expect("analyze");
        tables.contains(&"contacts".to_string()).then_some(tables)
    })
    .await;
    assert!(!analyzed.contains(&"step_history".to_string()), "{analyzed:?}");
    let estimate: i64 = sqlx::query_scalar("SELECT CAST(reltuples AS BIGINT) FROM pg_class WHERE relname = 'contacts'")
        .fetch_one(&store.pool)
        .await
        .unwrap();
    assert_eq!(estimate, 1_500);
    // Analyzed: not again until it doubles once more. Updates do not count, however many:
    // a small table updated all the time must not be analyzed (and replanned) every time.
    for _ in 0..3 {
        sqlx::query("UPDATE contacts SET last_seen_at = last_seen_at")
            .execute(&store.pool)
            .await
            .unwrap();
    }
    let changed = |store: &Store| {
        let pool = store.pool.clone();
        async move {
            let changed: i64 = sqlx::query_scalar(
                "SELECT CAST(n_mod_since_analyze AS BIGINT) FROM pg_stat_user_tables WHERE relname = 'contacts'",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            (changed >= 4_500).then_some(())
        }
    };
    eventually("the updates counted", Duration::from_secs(15), || changed(&store)).await;
    let again = store.analyze_grown_tables().await.expect("analyze");
    assert!(!again.contains(&"contacts".to_string()), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_analyzed_in_sqlite() {
    let store = store(Mode::Embedded).await;
    add_contacts(&store).await;
    assert!(store.analyze_grown_tables().await.expect("analyze").is_empty());
}
