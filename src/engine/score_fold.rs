//! Keeping a contact's score entries bounded. Every point is an entry, and the decayed score
//! is computed from all of them whenever the contact is loaded, so a contact that scores every
//! day would cost more to load every day. Past `MAX_ENTRIES`, the entries older than a day are
//! folded, per rule, into one entry worth the same now and ever after (`scoring::fold`), with
//! the same points, so caps (`max_total`) and trait rules still see what the rule gave; the
//! last day's entries stay as they are for `max_per_day`.
//!
//! Cost: one indexed `COUNT` per scored message (the entries of one contact, at most
//! `MAX_ENTRIES` plus a day's); the fold itself runs about once per `MAX_ENTRIES / 2` scored
//! events of a contact.

use super::runner::{Engine, Result};
use crate::scoring;
use crate::store::{self, scores};
use chrono::{DateTime, Duration, Utc};
use std::collections::BTreeMap;

/// One rule's entries to fold: their ids, and their points with when.
type Fold = (Vec<i64>, Vec<(i64, DateTime<Utc>)>);

/// Entries a contact keeps before its older ones are folded.
pub const MAX_ENTRIES: i64 = 64;

impl Engine {
    /// Folds the contact's older entries when it has more than `MAX_ENTRIES`.
    pub(crate) async fn fold_score_entries(
        &self,
        tx: &mut store::Tx<'_>,
        contact_id: i64,
        now: DateTime<Utc>,
    ) -> Result<()> {
        if scores::count_of_contact(tx, contact_id).await? <= MAX_ENTRIES {
            return Ok(());
        }
        let decay = self.catalog().scoring.as_ref().and_then(|s| s.decay);
        let mut by_rule: BTreeMap<String, Fold> = BTreeMap::new();
        for (id, rule, points, at) in scores::older_than(tx, contact_id, now - Duration::days(1)).await? {
            let (ids, entries) = by_rule.entry(rule).or_default();
            ids.push(id);
            entries.push((points, at));
        }
        for (rule, (ids, entries)) in by_rule {
            if ids.len() < 2 {
                continue;
            }
            if let Some((points, at)) = scoring::fold(&entries, decay) {
                scores::replace(tx, contact_id, &ids, &rule, points, at).await?;
            }
        }
        Ok(())
    }
}
