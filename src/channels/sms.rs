//! SMS. Until a provider adapter is configured, messages go to `outbox/sms/` as JSON files.

use super::Error;
use crate::journey::templates::RenderedSms;
use std::path::PathBuf;

#[derive(Clone, Debug)]
pub enum SmsSender {
    Outbox(PathBuf),
}

impl SmsSender {
    pub async fn send(&self, key: &str, to: &str, sms: &RenderedSms) -> Result<String, Error> {
        match self {
            SmsSender::Outbox(dir) => {
                tokio::fs::create_dir_all(dir)
                    .await
                    .map_err(|e| Error::Transient(format!("cannot create {}: {e}", dir.display())))?;
                let name = key.replace(['/', '\\'], "_");
                let body = serde_json::json!({"to": to, "body": sms.body, "segments": sms.segments, "encoding": sms.encoding, "template": sms.template});
                let path = dir.join(format!("{name}.json"));
                tokio::fs::write(&path, serde_json::to_vec_pretty(&body).unwrap_or_default())
                    .await
                    .map_err(|e| Error::Transient(format!("cannot write {}: {e}", path.display())))?;
                Ok(format!("outbox {}", path.display()))
            }
        }
    }
}
