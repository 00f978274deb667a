//! `nurture import FILE`: bulk loading of contacts (`.csv`) or Segment messages (`.jsonl`,
//! `.ndjson`).
//!
//! Every row goes through the same checks as the events API (`events::segment::parse_batch`)
//! and the same ingestion (`Engine::ingest`, source `import`), in batches of one transaction
//! each, so imported track events enrol contacts exactly as live ones do.
//!
//! Resuming: every row has a stable message id (its own `messageId`, else one made of the file
//! name, the line number and a hash of the row), so importing a file again skips what is already
//! stored. After each committed batch a checkpoint, `FILE.import-progress`, records how far the
//! import got (byte offset, line, a hash of the bytes before it); a run that finds it skips
//! ahead without sending those rows again, unless the file changed before that point. The
//! checkpoint is deleted when the import completes.
//!
//! Rejected rows go to `FILE.rejected.jsonl`, one `{"line", "field", "reason", "row"}` per
//! line. Exit code: 0 all imported, 1 some rows rejected (the others are imported), 2 usage or
//! I/O error, 130 interrupted (Ctrl-C stops after the current batch; run again to resume).

use super::out;
use crate::app;
use crate::config::Config;
use crate::engine::ingest::{normalize_email, normalize_phone};
use crate::engine::runner::Engine;
use crate::events::{Message, parse_batch};
use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use clap::ValueEnum;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Map, Value as Json};
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, IsTerminal, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Imported messages are deduplicated under this source (with their message ids).
pub const SOURCE: &str = "import";

#[derive(clap::Args)]
pub struct Args {
    /// `contacts.csv` (a header row, then one contact per row) or `events.jsonl` / `.ndjson`
    /// (one Segment message per line).
    pub file: PathBuf,
    /// The file's format, when its extension does not say.
    #[arg(long, value_enum)]
    pub format: Option<FileFormat>,
    /// Rows stored per transaction, and between checkpoints.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=5000))]
    pub batch_size: u32,
    /// No progress bar (it is hidden anyway when standard error is not a terminal).
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FileFormat {
    /// A header row, then one contact (an `identify`) per row.
    Csv,
    /// One Segment message (a JSON object) per line.
    Jsonl,
}

impl FileFormat {
    fn of(path: &Path) -> Option<FileFormat> {
        let extension = path.extension()?.to_str()?.to_ascii_lowercase();
        match extension.as_str() {
            "csv" => Some(FileFormat::Csv),
            "jsonl" | "ndjson" => Some(FileFormat::Jsonl),
            _ => None,
        }
    }
}

/// Test hook for the resume test: with `NURTURE_TEST_IMPORT_EXIT_AFTER_BATCHES=N`, the import
/// exits abruptly (status 99, like a crash) once N batches are committed and checkpointed.
const EXIT_AFTER_BATCHES: &str = "NURTURE_TEST_IMPORT_EXIT_AFTER_BATCHES";

pub fn run(args: Args) -> Result<ExitCode> {
    let format = match args.format {
        Some(format) => format,
        None => FileFormat::of(&args.file).with_context(|| {
            format!(
                "cannot tell the format of {} from its extension (.csv, .jsonl or .ndjson); pass --format csv or --format jsonl",
                args.file.display()
            )
        })?,
    };
    File::open(&args.file).with_context(|| format!("cannot read {}", args.file.display()))?;
    let config = Config::load(Path::new("."))?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let engine = app::build_default(config).await?;
        import(&engine, &args, format).await
    })
}

/// Totals of one import, kept in the checkpoint so a resumed run reports the whole file.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
struct Counts {
    read: u64,
    imported: u64,
    duplicates: u64,
    rejected: u64,
}

/// How far an interrupted import got: everything before `offset` is committed.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Checkpoint {
    /// Bytes of the file consumed; the next row starts here.
    offset: u64,
    /// Lines consumed.
    line: u64,
    /// SHA-256 of the file's first `offset` bytes: a changed file is imported from the start.
    sha256: String,
    /// Length of `FILE.rejected.jsonl` at this point.
    rejected_bytes: u64,
    counts: Counts,
}

/// A row that is not imported, as written to `FILE.rejected.jsonl`.
#[derive(Debug, serde::Serialize)]
struct Rejection {
    line: u64,
    /// The offending field (`email`, `event`, ...); `null` when it is the whole row.
    field: Option<String>,
    reason: String,
    /// The row: the JSON value of a JSON Lines row (its text if it is not JSON), the text of a
    /// CSV row.
    row: Json,
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn import(engine: &std::sync::Arc<Engine>, args: &Args, format: FileFormat) -> Result<ExitCode> {
    let path = &args.file;
    let progress_path = with_suffix(path, ".import-progress");
    let rejected_path = with_suffix(path, ".rejected.jsonl");
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    let size = std::fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();

    let checkpoint = read_checkpoint(&progress_path);
    let phone_country_code = engine.config.phone_country_code.clone();
    let mut rows = Rows::open(path, format, &file_name, &phone_country_code)?;
    let mut counts = Counts::default();
    let mut rejected_bytes = 0;
    if let Some(checkpoint) = checkpoint {
        if rows.skip_to(&checkpoint)? {
            eprintln!(
                "resuming {} after line {} (an earlier import stopped there; delete {} to start over)",
                path.display(),
                checkpoint.line,
                progress_path.display()
            );
            counts = checkpoint.counts;
            rejected_bytes = checkpoint.rejected_bytes;
        } else {
            eprintln!(
                "{} changed since the interrupted import: starting from the beginning (rows already imported count as duplicates)",
                path.display()
            );
            rows = Rows::open(path, format, &file_name, &phone_country_code)?;
        }
    }

    let mut rejected_file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&rejected_path)
        .with_context(|| format!("cannot write {}", rejected_path.display()))?;
    rejected_file.set_len(rejected_bytes)?;
    rejected_file.seek(SeekFrom::End(0))?;

    let bar = if args.quiet || !std::io::stderr().is_terminal() {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::with_draw_target(Some(size), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {elapsed}<{eta} {msg}")?.progress_chars("=> "),
        );
        bar
    };
    bar.set_position(rows.lines.offset);

    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let interrupted = interrupted.clone();
        let bar = bar.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                interrupted.store(true, Ordering::SeqCst);
                bar.suspend(|| {
                    eprintln!("interrupted: finishing the current batch (Ctrl-C again stops at once)");
                });
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(130);
                }
            }
        });
    }
    let exit_after: Option<u64> = std::env::var(EXIT_AFTER_BATCHES).ok().and_then(|n| n.parse().ok());

    let mut batches = 0u64;
    loop {
        let received_at = engine.clock.now();
        let mut messages = Vec::new();
        let mut rejections = Vec::new();
        let mut finished = false;
        while messages.len() + rejections.len() < args.batch_size as usize {
            let Some(row) = rows.next_row()? else {
                finished = true;
                break;
            };
            counts.read += 1;
            match rows.message(row, received_at) {
                Ok(message) => messages.push(message),
                Err(rejection) => rejections.push(rejection),
            }
            bar.set_position(rows.lines.offset);
        }
        if !messages.is_empty() {
            let report = engine.ingest(SOURCE, &messages).await.with_context(|| {
                format!(
                    "storing the rows before line {} failed; the rows before them are stored, run the same command again to resume",
                    rows.lines.line + 1
                )
            })?;
            counts.imported += report.accepted as u64;
            counts.duplicates += report.duplicates as u64;
        }
        for rejection in &rejections {
            let mut text = serde_json::to_string(rejection)?;
            text.push('\n');
            rejected_file
                .write_all(text.as_bytes())
                .with_context(|| format!("cannot write {}", rejected_path.display()))?;
            rejected_bytes += text.len() as u64;
            counts.rejected += 1;
        }
        bar.set_message(format!("{} imported, {} rejected", counts.imported, counts.rejected));
        if finished {
            break;
        }
        rejected_file.flush()?;
        let checkpoint = Checkpoint {
            offset: rows.lines.offset,
            line: rows.lines.line,
            sha256: rows.lines.digest(),
            rejected_bytes,
            counts: counts.clone(),
        };
        write_checkpoint(&progress_path, &checkpoint)?;
        batches += 1;
        if exit_after == Some(batches) {
            std::process::exit(99);
        }
        if interrupted.load(Ordering::SeqCst) {
            bar.abandon();
            summary(&file_name, &counts, &rejected_path);
            eprintln!(
                "interrupted after line {}: run the same command again to resume",
                rows.lines.line
            );
            return Ok(ExitCode::from(130));
        }
    }
    bar.finish_and_clear();
    drop(rejected_file);
    match std::fs::remove_file(&progress_path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot delete {}", progress_path.display())),
    }
    if counts.rejected == 0 {
        let _ = std::fs::remove_file(&rejected_path);
    }
    summary(&file_name, &counts, &rejected_path);
    Ok(if counts.rejected == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn summary(file_name: &str, counts: &Counts, rejected_path: &Path) {
    out(&format!(
        "{file_name}: {} read, {} imported, {} duplicates (already imported), {} rejected\n",
        counts.read, counts.imported, counts.duplicates, counts.rejected
    ));
    if counts.rejected > 0 {
        out(&format!("rejected rows, with reasons: {}\n", rejected_path.display()));
    }
}

/// The checkpoint if there is a readable one; an unreadable one is ignored (with a warning):
/// importing from the start is always safe.
fn read_checkpoint(path: &Path) -> Option<Checkpoint> {
    let text = std::fs::read_to_string(path).ok()?;
    match serde_json::from_str(&text) {
        Ok(checkpoint) => Some(checkpoint),
        Err(e) => {
            eprintln!("ignoring {}: {e}", path.display());
            None
        }
    }
}

/// Written to a temporary file and renamed, so a crash leaves the old or the new one.
fn write_checkpoint(path: &Path, checkpoint: &Checkpoint) -> Result<()> {
    let temporary = with_suffix(path, ".tmp");
    std::fs::write(&temporary, serde_json::to_vec(checkpoint)?)
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Physical lines of the file, with the byte offset after each and a running hash.
struct Lines {
    reader: BufReader<File>,
    offset: u64,
    line: u64,
    hasher: Sha256,
    buf: Vec<u8>,
}

struct Line {
    number: u64,
    /// Without its line break (and without a byte-order mark on the first line).
    text: String,
    utf8: bool,
}

impl Lines {
    fn open(path: &Path) -> Result<Lines> {
        let file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        Ok(Lines {
            reader: BufReader::with_capacity(256 * 1024, file),
            offset: 0,
            line: 0,
            hasher: Sha256::new(),
            buf: Vec::new(),
        })
    }

    fn next(&mut self) -> Result<Option<Line>> {
        self.buf.clear();
        let n = self.reader.read_until(b'\n', &mut self.buf)?;
        if n == 0 {
            return Ok(None);
        }
        self.hasher.update(&self.buf);
        self.offset += n as u64;
        self.line += 1;
        let mut bytes: &[u8] = &self.buf;
        if let Some(rest) = bytes.strip_suffix(b"\n") {
            bytes = rest.strip_suffix(b"\r").unwrap_or(rest);
        }
        if self.line == 1 {
            bytes = bytes.strip_prefix("\u{feff}".as_bytes()).unwrap_or(bytes);
        }
        let (text, utf8) = match std::str::from_utf8(bytes) {
            Ok(text) => (text.to_string(), true),
            Err(_) => (String::from_utf8_lossy(bytes).into_owned(), false),
        };
        Ok(Some(Line {
            number: self.line,
            text,
            utf8,
        }))
    }

    fn digest(&self) -> String {
        hex(&self.hasher.clone().finalize())
    }
}

/// A CSV column, by its header (compared without case, spaces, `_` or `-`).
#[derive(Clone, Debug, PartialEq)]
enum Column {
    UserId,
    AnonymousId,
    Email,
    Phone,
    MessageId,
    Timestamp,
    Trait(String),
    /// A column with an empty header.
    Ignored,
}

impl Column {
    fn of(header: &str) -> Column {
        let key: String = header
            .chars()
            .filter(|c| c.is_alphanumeric())
            .flat_map(char::to_lowercase)
            .collect();
        match key.as_str() {
            "" => Column::Ignored,
            "userid" => Column::UserId,
            "anonymousid" => Column::AnonymousId,
            "email" => Column::Email,
            "phone" => Column::Phone,
            "messageid" => Column::MessageId,
            "timestamp" => Column::Timestamp,
            _ => Column::Trait(header.trim().to_string()),
        }
    }
}

/// A row as read: its first line, its text, and its cells for CSV.
struct Row {
    line: u64,
    text: String,
    problem: Option<String>,
    cells: Vec<String>,
}

/// The rows of the file, turned into messages.
struct Rows {
    lines: Lines,
    format: FileFormat,
    file_name: String,
    phone_country_code: String,
    /// CSV: the header's text (part of every row's hash) and its columns.
    header: String,
    columns: Vec<Column>,
}

impl Rows {
    fn open(path: &Path, format: FileFormat, file_name: &str, phone_country_code: &str) -> Result<Rows> {
        let mut rows = Rows {
            lines: Lines::open(path)?,
            format,
            file_name: file_name.to_string(),
            phone_country_code: phone_country_code.to_string(),
            header: String::new(),
            columns: Vec::new(),
        };
        if format == FileFormat::Csv {
            let Some(header) = rows.next_record()? else {
                bail!("{} is empty; a CSV file starts with a header row", path.display());
            };
            if let Some(problem) = header.problem {
                bail!("the header row of {} is not valid: {problem}", path.display());
            }
            let columns: Vec<Column> = header.cells.iter().map(|h| Column::of(h)).collect();
            for (i, column) in columns.iter().enumerate() {
                if *column != Column::Ignored && columns[..i].contains(column) {
                    bail!(
                        "the header row of {} names the column `{}` twice",
                        path.display(),
                        header.cells[i].trim()
                    );
                }
            }
            rows.header = header.text;
            rows.columns = columns;
        }
        Ok(rows)
    }

    /// Skips what the checkpoint says is committed; false if the file no longer matches it.
    fn skip_to(&mut self, checkpoint: &Checkpoint) -> Result<bool> {
        while self.lines.offset < checkpoint.offset {
            if self.lines.next()?.is_none() {
                return Ok(false);
            }
        }
        Ok(self.lines.offset == checkpoint.offset
            && self.lines.line == checkpoint.line
            && self.lines.digest() == checkpoint.sha256)
    }

    /// The next non-blank row, or `None` at the end of the file.
    fn next_row(&mut self) -> Result<Option<Row>> {
        loop {
            let row = match self.format {
                FileFormat::Csv => self.next_record()?,
                FileFormat::Jsonl => self.lines.next()?.map(|line| Row {
                    line: line.number,
                    problem: (!line.utf8).then(|| "the line is not UTF-8 text".to_string()),
                    text: line.text,
                    cells: Vec::new(),
                }),
            };
            match row {
                None => return Ok(None),
                Some(row) if row.problem.is_none() && row.text.trim().is_empty() => continue,
                Some(row)
                    if self.format == FileFormat::Csv
                        && row.problem.is_none()
                        && row.cells.iter().all(|c| c.trim().is_empty()) =>
                {
                    continue;
                }
                Some(row) => return Ok(Some(row)),
            }
        }
    }

    /// One CSV record, which may span lines when a quoted cell holds line breaks.
    fn next_record(&mut self) -> Result<Option<Row>> {
        let mut record = CsvRecord::default();
        let mut text = String::new();
        let mut first = None;
        let mut utf8 = true;
        loop {
            let Some(line) = self.lines.next()? else {
                return Ok(first.map(|line| Row {
                    line,
                    text,
                    problem: Some("a quoted cell is not closed".into()),
                    cells: Vec::new(),
                }));
            };
            if first.is_none() {
                first = Some(line.number);
            } else {
                text.push('\n');
            }
            text.push_str(&line.text);
            utf8 &= line.utf8;
            if record.feed(&line.text) {
                return Ok(Some(Row {
                    line: first.unwrap_or(line.number),
                    text,
                    problem: (!utf8).then(|| "the row is not UTF-8 text".to_string()),
                    cells: record.fields,
                }));
            }
        }
    }

    /// The row as a checked message, or why it is rejected.
    fn message(&self, row: Row, received_at: DateTime<Utc>) -> Result<Message, Rejection> {
        let reject = |field: Option<&str>, reason: String, row: &Row| Rejection {
            line: row.line,
            field: field.map(str::to_string),
            reason,
            row: match self.format {
                FileFormat::Csv => Json::String(row.text.clone()),
                FileFormat::Jsonl => serde_json::from_str(&row.text).unwrap_or_else(|_| Json::String(row.text.clone())),
            },
        };
        if let Some(problem) = &row.problem {
            return Err(reject(None, problem.clone(), &row));
        }
        let (item, hashed) = match self.format {
            FileFormat::Jsonl => {
                let item = jsonl_item(&row.text).map_err(|reason| reject(None, reason, &row))?;
                (item, row.text.clone())
            }
            FileFormat::Csv => {
                let item = csv_item(&self.columns, &row.cells, &self.phone_country_code)
                    .map_err(|(field, reason)| reject(field, reason, &row))?;
                (item, format!("{}\n{}", self.header, row.text))
            }
        };
        let id = derived_id(&self.file_name, row.line, &hashed);
        check(item, id, received_at).map_err(|(field, reason)| reject(field.as_deref(), reason, &row))
    }
}

/// The message id of a row that has none: stable across runs, so re-importing is a no-op.
fn derived_id(file_name: &str, line: u64, content: &str) -> String {
    let digest = Sha256::digest(content.as_bytes());
    let name: String = file_name.chars().take(100).collect();
    format!("import:{name}:{line}:{}", hex(&digest[..8]))
}

/// A JSON Lines row as a Segment message: `type` defaults to `track` when there is an
/// `event`, else to `identify` when there are `traits`.
fn jsonl_item(text: &str) -> Result<Json, String> {
    let mut item: Json = serde_json::from_str(text).map_err(|e| format!("the line is not valid JSON: {e}"))?;
    if let Json::Object(object) = &mut item
        && object.get("type").is_none_or(Json::is_null)
    {
        if object.get("event").is_some_and(|e| !e.is_null()) {
            object.insert("type".into(), Json::from("track"));
        } else if object.contains_key("traits") {
            object.insert("type".into(), Json::from("identify"));
        }
    }
    Ok(item)
}

/// A CSV row as an `identify`. `user_id`, `anonymous_id`, `message_id` and `timestamp` are the
/// message's; `email` and `phone` are traits that identify the contact (checked here: a bad
/// one rejects the row); every other column is a trait. Empty cells are skipped; cells are
/// trimmed; a cell that is a plain decimal number (`42`, `-3`, `1.5`; not `007` or `1e3`)
/// becomes a JSON number, anything else stays a string. A row with no user id or anonymous id
/// is given the anonymous id `email:ADDRESS` or `phone:+NUMBER`, so one person is one contact
/// however often they are imported.
fn csv_item(
    columns: &[Column],
    cells: &[String],
    phone_country_code: &str,
) -> Result<Json, (Option<&'static str>, String)> {
    if cells.len() != columns.len() {
        return Err((
            None,
            format!("the row has {} cells, the header has {}", cells.len(), columns.len()),
        ));
    }
    let mut message = Map::new();
    let mut traits = Map::new();
    let mut email = None;
    let mut phone = None;
    message.insert("type".into(), Json::from("identify"));
    for (column, cell) in columns.iter().zip(cells) {
        let cell = cell.trim();
        if cell.is_empty() {
            continue;
        }
        match column {
            Column::UserId => {
                message.insert("userId".into(), Json::from(cell));
            }
            Column::AnonymousId => {
                message.insert("anonymousId".into(), Json::from(cell));
            }
            Column::MessageId => {
                message.insert("messageId".into(), Json::from(cell));
            }
            Column::Timestamp => {
                message.insert("timestamp".into(), Json::from(cell));
            }
            Column::Email => {
                let normalized = normalize_email(cell)
                    .ok_or_else(|| (Some("email"), format!("`{cell}` is not an email address")))?;
                email = Some(normalized);
                traits.insert("email".into(), Json::from(cell));
            }
            Column::Phone => {
                let normalized = normalize_phone(cell, phone_country_code)
                    .ok_or_else(|| (Some("phone"), format!("`{cell}` is not a phone number")))?;
                phone = Some(normalized);
                traits.insert("phone".into(), Json::from(cell));
            }
            Column::Trait(name) => {
                traits.insert(name.clone(), cell_value(cell));
            }
            Column::Ignored => {}
        }
    }
    if !message.contains_key("userId") && !message.contains_key("anonymousId") {
        let anonymous = match (email, phone) {
            (Some(email), _) => format!("email:{email}"),
            (None, Some(phone)) => format!("phone:{phone}"),
            (None, None) => {
                return Err((
                    Some("user_id"),
                    "a row needs a user_id, an anonymous_id, an email or a phone".into(),
                ));
            }
        };
        message.insert("anonymousId".into(), Json::from(anonymous));
    }
    message.insert("traits".into(), Json::Object(traits));
    Ok(Json::Object(message))
}

/// `42`, `-3`, `1.5` are numbers; `007`, `+1`, `1e3`, `1.` and integers beyond 64 bits stay text.
fn cell_value(cell: &str) -> Json {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let unsigned = cell.strip_prefix('-').unwrap_or(cell);
    let (whole, fraction) = match unsigned.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (unsigned, None),
    };
    let plain = digits(whole) && (whole == "0" || !whole.starts_with('0')) && fraction.is_none_or(digits);
    if !plain {
        return Json::from(cell);
    }
    let number = match fraction {
        None => cell.parse::<i64>().ok().map(serde_json::Number::from),
        Some(_) => cell.parse::<f64>().ok().and_then(serde_json::Number::from_f64),
    };
    number.map_or_else(|| Json::from(cell), Json::Number)
}

/// Checks one message exactly as the API's `/v1/batch` does; `id` is its message id unless it
/// has one.
fn check(item: Json, id: String, received_at: DateTime<Utc>) -> Result<Message, (Option<String>, String)> {
    let mut body = Map::new();
    body.insert("batch".into(), Json::Array(vec![item]));
    let mut id = Some(id);
    let mut fresh_id = move || id.take().unwrap_or_default();
    let parsed = parse_batch(&Json::Object(body), received_at, &mut fresh_id).map_err(|e| (None, e.message))?;
    if let Some(message) = parsed.messages.into_iter().next() {
        return Ok(message);
    }
    let invalid = parsed.rejected.into_iter().next();
    Err(match invalid {
        Some(invalid) => {
            let field = invalid
                .field
                .strip_prefix("batch[0]")
                .map(|f| f.trim_start_matches('.').to_string())
                .unwrap_or(invalid.field);
            ((!field.is_empty()).then_some(field), invalid.message)
        }
        None => (None, "not a message".into()),
    })
}

/// RFC 4180 cells, fed one physical line at a time: a quoted cell may hold commas, line breaks
/// and `""` for a quote. A quote inside an unquoted cell is kept as text.
#[derive(Default)]
struct CsvRecord {
    fields: Vec<String>,
    field: String,
    in_quotes: bool,
    quoted: bool,
}

impl CsvRecord {
    /// Adds one line; true when the record is complete.
    fn feed(&mut self, line: &str) -> bool {
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            if self.in_quotes {
                if c == '"' {
                    if chars.peek() == Some(&'"') {
                        chars.next();
                        self.field.push('"');
                    } else {
                        self.in_quotes = false;
                    }
                } else {
                    self.field.push(c);
                }
            } else if c == ',' {
                self.fields.push(std::mem::take(&mut self.field));
                self.quoted = false;
            } else if c == '"' && !self.quoted && self.field.trim().is_empty() {
                self.field.clear();
                self.in_quotes = true;
                self.quoted = true;
            } else {
                self.field.push(c);
            }
        }
        if self.in_quotes {
            self.field.push('\n');
            false
        } else {
            self.fields.push(std::mem::take(&mut self.field));
            self.quoted = false;
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cells(lines: &[&str]) -> (Vec<String>, usize) {
        let mut record = CsvRecord::default();
        for (i, line) in lines.iter().enumerate() {
            if record.feed(line) {
                return (record.fields, i + 1);
            }
        }
        panic!("incomplete record");
    }

    #[test]
    fn csv_cells_follow_rfc_4180() {
        assert_eq!(cells(&["a,b,,c"]).0, ["a", "b", "", "c"]);
        assert_eq!(
            cells(&[r#""x, y","say ""hi""",5'10""#]).0,
            ["x, y", "say \"hi\"", "5'10\""]
        );
        assert_eq!(
            cells(&["1,\"two", "lines\",3"]),
            (vec!["1".into(), "two\nlines".into(), "3".into()], 2)
        );
        assert_eq!(cells(&[""]).0, [""]);
    }

    #[test]
    fn plain_numbers_become_numbers_and_the_rest_stays_text() {
        assert_eq!(cell_value("42"), json!(42));
        assert_eq!(cell_value("-3"), json!(-3));
        assert_eq!(cell_value("1.5"), json!(1.5));
        assert_eq!(cell_value("0"), json!(0));
        for text in ["007", "+1", "1e3", "1.", ".5", "12345678901234567890", "Shanghai", "-"] {
            assert_eq!(cell_value(text), json!(text), "{text}");
        }
    }

    #[test]
    fn a_csv_row_is_an_identify_with_traits() {
        let columns: Vec<Column> = ["User ID", "email", "Phone", "region", "employees", "zip"]
            .iter()
            .map(|h| Column::of(h))
            .collect();
        let row = |cells: &[&str]| csv_item(&columns, &cells.iter().map(|c| c.to_string()).collect::<Vec<_>>(), "86");
        assert_eq!(
            row(&["u1", " Ada@Example.com", "", "Shanghai", "250", "02134"]).unwrap(),
            json!({"type": "identify", "userId": "u1", "traits": {"email": "Ada@Example.com", "region": "Shanghai", "employees": 250, "zip": "02134"}})
        );
        assert_eq!(
            row(&["", "", "138 0013 8000", "", "", ""]).unwrap()["anonymousId"],
            "phone:+8613800138000"
        );
        assert_eq!(row(&["", "", "", "Beijing", "", ""]).unwrap_err().0, Some("user_id"));
        assert_eq!(row(&["u1", "nope", "", "", "", ""]).unwrap_err().0, Some("email"));
        assert_eq!(row(&["u1"]).unwrap_err().0, None);
    }

    #[test]
    fn rows_are_checked_like_the_api_and_keep_a_stable_id() {
        let now = DateTime::parse_from_rfc3339("2026-11-23T14:16:12Z")
            .unwrap()
            .with_timezone(&Utc);
        let item = jsonl_item(r#"{"userId": "u1", "event": "Signed Up"}"#).unwrap();
        let message = check(item, "derived".into(), now).unwrap();
        assert_eq!(message.kind, crate::events::Kind::Track);
        assert_eq!(message.message_id, "derived");
        let own = jsonl_item(r#"{"userId": "u1", "traits": {"a": 1}, "messageId": "m1"}"#).unwrap();
        let message = check(own, "derived".into(), now).unwrap();
        assert_eq!(message.kind, crate::events::Kind::Identify);
        assert_eq!(message.message_id, "m1");
        let bad = jsonl_item(r#"{"type": "track", "userId": "u1"}"#).unwrap();
        assert_eq!(check(bad, "d".into(), now).unwrap_err().0.as_deref(), Some("event"));
        let not_object = jsonl_item("[1]").unwrap();
        assert_eq!(check(not_object, "d".into(), now).unwrap_err().0, None);
        assert!(jsonl_item("{").is_err());
        assert_eq!(derived_id("a.csv", 3, "x"), derived_id("a.csv", 3, "x"));
        assert_ne!(derived_id("a.csv", 3, "x"), derived_id("a.csv", 4, "x"));
        assert_ne!(derived_id("a.csv", 3, "x"), derived_id("a.csv", 3, "y"));
    }
}
