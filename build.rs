//! `sqlx::migrate!` embeds `migrations/` at compile time but does not tell cargo to watch the
//! folder: without this, an incremental build can miss a new migration file.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
