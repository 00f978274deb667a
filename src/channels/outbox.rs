//! The embedded mode's sink for messages: instead of sending, append them to one file per day
//! and kind, `outbox/mail/2026-12-01.mbox` (mboxrd, which any mail client opens) and
//! `outbox/sms/2026-12-01.jsonl`.
//!
//! Why files per day and not a file per message: creating a file costs the kernel far more
//! than appending to one (on ext4, 25–400 µs of CPU per new inode, more right after many
//! deletions), and at a few thousand messages a second that was the largest cost of the whole
//! process. One writer thread appends everything that is queued with one `write` per file, so
//! concurrent sends do not fight over the directory either. Each file is opened with
//! `O_APPEND`, so several processes sharing an outbox append whole writes side by side.

use chrono::{DateTime, Utc};
use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use tokio::sync::{mpsc, oneshot};

/// A handle to the writer thread; cheap to clone.
#[derive(Clone, Debug)]
pub struct Outbox {
    dir: PathBuf,
    appends: mpsc::UnboundedSender<Work>,
}

struct Append {
    file: PathBuf,
    bytes: Vec<u8>,
    written: oneshot::Sender<std::io::Result<()>>,
}

/// What the writer thread does: appends, and now and then an erasure's rewrite of a file.
enum Work {
    Append(Append),
    Redact(Redact),
}

/// Rewrites one file without the messages of some effect keys (see `Outbox::redact`).
struct Redact {
    file: PathBuf,
    keys: HashSet<String>,
    done: oneshot::Sender<std::io::Result<usize>>,
}

impl Outbox {
    /// Starts the writer thread for `dir` (created on the first append).
    pub fn new(dir: &Path) -> Outbox {
        let (appends, receiver) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("nurture-outbox".into())
            .spawn(move || write_appends(receiver))
            .expect("start the outbox writer thread");
        Outbox {
            dir: dir.to_path_buf(),
            appends,
        }
    }

    /// Appends an email (RFC 5322 bytes) to today's mbox. Returns the file, relative to the
    /// outbox, once the bytes are written.
    pub async fn mail(&self, message: &[u8], at: DateTime<Utc>) -> std::io::Result<String> {
        let name = format!("mail/{}.mbox", at.format("%Y-%m-%d"));
        self.append(&name, mbox_entry(message, at)).await?;
        Ok(name)
    }

    /// Appends one JSON line to today's file of `kind` (e.g. `sms`).
    pub async fn line(&self, kind: &str, value: &serde_json::Value, at: DateTime<Utc>) -> std::io::Result<String> {
        let name = format!("{kind}/{}.jsonl", at.format("%Y-%m-%d"));
        let mut bytes = serde_json::to_vec(value).map_err(std::io::Error::other)?;
        bytes.push(b'\n');
        self.append(&name, bytes).await?;
        Ok(name)
    }

    async fn append(&self, name: &str, bytes: Vec<u8>) -> std::io::Result<()> {
        let (written, outcome) = oneshot::channel();
        self.appends
            .send(Work::Append(Append {
                file: self.dir.join(name),
                bytes,
                written,
            }))
            .map_err(|_| stopped())?;
        outcome.await.map_err(|_| stopped())?
    }

    /// Erasure: rewrites the file `name` (relative to the outbox) with the messages of `keys`
    /// (effect keys: an email's `Message-ID` names its key, an SMS line has it as `key`)
    /// reduced to a stub that names the key only, so the file keeps its count of messages and
    /// loses the address and the content. Returns how many were redacted; a missing file has
    /// none.
    ///
    /// Why a rewrite and not an index of offsets: erasure is rare and only touches the days a
    /// contact got messages, so reading those files once costs less than keeping an index on
    /// every append. The writer thread does it between appends, so none is lost or torn.
    pub async fn redact(&self, name: &str, keys: HashSet<String>) -> std::io::Result<usize> {
        let (done, outcome) = oneshot::channel();
        self.appends
            .send(Work::Redact(Redact {
                file: self.dir.join(name),
                keys,
                done,
            }))
            .map_err(|_| stopped())?;
        outcome.await.map_err(|_| stopped())?
    }
}

fn stopped() -> std::io::Error {
    std::io::Error::other("the outbox writer has stopped")
}

/// The writer thread: takes everything queued, writes it with one `write` per file, answers.
fn write_appends(mut receiver: mpsc::UnboundedReceiver<Work>) {
    let mut open: HashMap<PathBuf, File> = HashMap::new();
    while let Some(first) = receiver.blocking_recv() {
        let mut queued = Vec::new();
        let mut next = Some(first);
        while let Some(work) = next.take() {
            match work {
                Work::Append(append) => queued.push(append),
                Work::Redact(redact) => {
                    // Appends queued before the rewrite land first, in the file it rewrites.
                    write_queued(&mut open, std::mem::take(&mut queued));
                    open.remove(&redact.file);
                    let _ = redact.done.send(redact_file(&redact.file, &redact.keys));
                }
            }
            next = receiver.try_recv().ok();
        }
        write_queued(&mut open, queued);
        // Days roll over: let go of files nobody wrote to in this round.
        if open.len() > 8 {
            open.clear();
        }
    }
}

/// Writes appends with one `write` per file, and answers each.
fn write_queued(open: &mut HashMap<PathBuf, File>, queued: Vec<Append>) {
    let mut by_file: HashMap<PathBuf, Vec<Append>> = HashMap::new();
    for append in queued {
        by_file.entry(append.file.clone()).or_default().push(append);
    }
    for (path, appends) in by_file {
        let bytes: Vec<u8> = appends.iter().flat_map(|a| a.bytes.iter().copied()).collect();
        let outcome = write_to(open, &path, &bytes);
        if outcome.is_err() {
            // Reopen next time: the directory may have been removed or remounted.
            open.remove(&path);
        }
        for append in appends {
            let _ = append.written.send(match &outcome {
                Ok(()) => Ok(()),
                Err(error) => Err(std::io::Error::new(error.kind(), error.to_string())),
            });
        }
    }
}

/// Rewrites `path` with the messages of `keys` reduced to stubs: written beside it, then
/// renamed over it, so a crash leaves either file whole.
fn redact_file(path: &Path, keys: &HashSet<String>) -> std::io::Result<usize> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(error) => return Err(error),
    };
    let (rewritten, count) = if path.extension().is_some_and(|e| e == "mbox") {
        redact_mbox(&text, keys)
    } else {
        redact_lines(&text, keys)
    };
    if count == 0 {
        return Ok(0);
    }
    let beside = path.with_extension("erasing");
    std::fs::write(&beside, rewritten)?;
    std::fs::rename(&beside, path)?;
    Ok(count)
}

/// mboxrd entries start at unquoted `From ` lines; an entry whose `Message-ID` names one of
/// `keys` (`<enrollment.step.seq@domain>`) keeps its separator and `Message-ID` only.
fn redact_mbox(text: &str, keys: &HashSet<String>) -> (String, usize) {
    let ids: HashSet<String> = keys.iter().map(|key| format!("<{}@", key.replace('/', "."))).collect();
    let mut out = String::with_capacity(text.len());
    let mut count = 0;
    let mut entries: Vec<&str> = Vec::new();
    let mut start = 0;
    for (at, _) in text.match_indices("From ") {
        if at == 0 || text.as_bytes()[at - 1] == b'\n' {
            if at > start {
                entries.push(&text[start..at]);
            }
            start = at;
        }
    }
    entries.push(&text[start..]);
    for entry in entries {
        let headers = entry.split("\n\n").next().unwrap_or("");
        let message_id = headers
            .lines()
            .find(|line| line.to_ascii_lowercase().starts_with("message-id:"))
            .map(|line| line["message-id:".len()..].trim());
        match message_id {
            Some(id) if ids.iter().any(|prefix| id.starts_with(prefix.as_str())) => {
                let separator = entry.lines().next().unwrap_or("From nurture");
                out.push_str(&format!("{separator}\nMessage-ID: {id}\nX-Nurture-Erased: yes\n\n"));
                count += 1;
            }
            _ => out.push_str(entry),
        }
    }
    (out, count)
}

/// A JSON line whose `key` is one of `keys` becomes `{"key": ..., "erased": true}`.
fn redact_lines(text: &str, keys: &HashSet<String>) -> (String, usize) {
    let mut out = String::with_capacity(text.len());
    let mut count = 0;
    for line in text.split_inclusive('\n') {
        let key = serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|value| value.get("key").and_then(|k| k.as_str()).map(str::to_string));
        match key {
            Some(key) if keys.contains(&key) => {
                out.push_str(&serde_json::json!({"key": key, "erased": true}).to_string());
                out.push('\n');
                count += 1;
            }
            _ => out.push_str(line),
        }
    }
    (out, count)
}

fn write_to(open: &mut HashMap<PathBuf, File>, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if !open.contains_key(path) {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        open.insert(path.to_path_buf(), file);
    }
    let file = open.get_mut(path).expect("opened above");
    file.write_all(bytes)
}

/// One mboxrd entry: the `From ` separator line, the message with LF line ends and body lines
/// that start with `From ` (after any `>`s) quoted with one more `>`, then a blank line.
fn mbox_entry(message: &[u8], at: DateTime<Utc>) -> Vec<u8> {
    let mut entry = Vec::with_capacity(message.len() + 64);
    entry.extend_from_slice(format!("From nurture {}\n", at.format("%a %b %e %H:%M:%S %Y")).as_bytes());
    let text = String::from_utf8_lossy(message);
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim_start_matches('>').starts_with("From ") {
            entry.push(b'>');
        }
        entry.extend_from_slice(line.as_bytes());
        entry.push(b'\n');
    }
    if !entry.ends_with(b"\n\n") {
        entry.push(b'\n');
    }
    entry
}

/// Messages in an outbox directory and its subdirectories: `From ` lines of `.mbox` files,
/// lines of `.jsonl` files, and one for any other file.
pub fn count_messages(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .filter_map(Result::ok)
        .map(|entry| {
            let path = entry.path();
            if path.is_dir() {
                return count_messages(&path);
            }
            let text = || std::fs::read_to_string(&path).unwrap_or_default();
            match path.extension().and_then(|e| e.to_str()) {
                Some("mbox") => text().lines().filter(|l| l.starts_with("From ")).count(),
                Some("jsonl") => text().lines().filter(|l| !l.trim().is_empty()).count(),
                _ => 1,
            }
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mbox_entries_quote_from_lines_and_end_with_a_blank_line() {
        let at = DateTime::parse_from_rfc3339("2026-12-01T09:05:03Z")
            .unwrap()
            .with_timezone(&Utc);
        let entry = mbox_entry(b"Subject: hi\r\n\r\nFrom here\r\n>From there\r\nbye\r\n", at);
        assert_eq!(
            String::from_utf8(entry).unwrap(),
            "From nurture Tue Dec  1 09:05:03 2026\nSubject: hi\n\n>From here\n>>From there\nbye\n\n"
        );
    }

    #[tokio::test]
    async fn erasure_redacts_a_contacts_messages_and_keeps_the_others_and_the_count() {
        let dir = std::env::temp_dir().join(format!("nurture-outbox-redact-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let outbox = Outbox::new(&dir);
        let at = DateTime::parse_from_rfc3339("2026-12-01T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let mail = |key: &str, to: &str| {
            format!(
                "Message-ID: <{}@example.com>\r\nTo: {to}\r\nSubject: Hi\r\n\r\nFrom your friends, {to}\r\n",
                key.replace('/', ".")
            )
        };
        let file = outbox
            .mail(mail("7/welcome/1", "ada@example.com").as_bytes(), at)
            .await
            .unwrap();
        outbox
            .mail(mail("8/welcome/1", "bob@example.com").as_bytes(), at)
            .await
            .unwrap();
        outbox
            .mail(mail("7/nudge/3", "ada@example.com").as_bytes(), at)
            .await
            .unwrap();
        outbox
            .line(
                "sms",
                &serde_json::json!({"key": "7/text/2", "to": "+8613800138000", "body": "Hi Ada"}),
                at,
            )
            .await
            .unwrap();
        let sms = outbox
            .line(
                "sms",
                &serde_json::json!({"key": "8/text/2", "to": "+8613900139000", "body": "Hi Bob"}),
                at,
            )
            .await
            .unwrap();
        let keys: HashSet<String> = ["7/welcome/1", "7/nudge/3", "7/text/2"].map(String::from).into();
        assert_eq!(outbox.redact(&file, keys.clone()).await.unwrap(), 2);
        assert_eq!(outbox.redact(&sms, keys.clone()).await.unwrap(), 1);
        // Appends after the rewrite land in the rewritten file.
        outbox
            .mail(mail("9/welcome/1", "cy@example.com").as_bytes(), at)
            .await
            .unwrap();
        let mbox = std::fs::read_to_string(dir.join(&file)).unwrap();
        let lines = std::fs::read_to_string(dir.join(&sms)).unwrap();
        assert!(
            !mbox.contains("ada@") && !lines.contains("+86138") && !lines.contains("Ada"),
            "{mbox}\n{lines}"
        );
        assert!(mbox.contains("bob@example.com") && mbox.contains("cy@example.com") && lines.contains("Hi Bob"));
        assert_eq!(count_messages(&dir.join("mail")), 4, "stubs keep the count: {mbox}");
        assert_eq!(count_messages(&dir.join("sms")), 2);
        assert_eq!(
            outbox.redact("mail/2020-01-01.mbox", keys).await.unwrap(),
            0,
            "no file, nothing to do"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn appends_from_many_tasks_land_whole_and_are_counted() {
        let dir = std::env::temp_dir().join(format!("nurture-outbox-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let outbox = Outbox::new(&dir);
        let at = DateTime::parse_from_rfc3339("2026-12-01T23:59:59Z")
            .unwrap()
            .with_timezone(&Utc);
        let sends = (0..200).map(|i| {
            let outbox = outbox.clone();
            async move {
                let body = format!("Subject: {i}\r\n\r\nFrom line {i}\r\n");
                outbox.mail(body.as_bytes(), at).await.unwrap();
                outbox.line("sms", &serde_json::json!({"n": i}), at).await.unwrap();
            }
        });
        futures::future::join_all(sends).await;
        assert_eq!(count_messages(&dir.join("mail")), 200);
        assert_eq!(count_messages(&dir.join("sms")), 200);
        let mbox = std::fs::read_to_string(dir.join(format!("mail/{}.mbox", at.format("%Y-%m-%d")))).unwrap();
        assert_eq!(mbox.matches(">From line").count(), 200);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
