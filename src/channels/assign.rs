//! Assignment of a lead to a sales rep by the team's strategy (round robin, territory,
//! least loaded), within each rep's capacity, never to the rep who just let the lead go; a
//! lead no rep has room for waits in the team's pool. The engine (`engine/sales.rs`) records
//! what this does as events and tells the reps.
//!
//! One assignment costs the same however many leads came before it: open leads per rep are kept
//! in `rep_load` and the round-robin turn in `team_cursors`, so nothing counts `assignments`.
//! Whatever closes an assignment (reject, recycle, outcome, another team) decrements `rep_load`
//! in the same transaction (`store/sales.rs`).

use super::Error;
use crate::engine::Contact;
use crate::expr::{ContactFacts, EventCounter};
use crate::journey::sales::{Rep, Strategy, Team};
use crate::store::sales::{self as leads, Lead, NewLead, Status};
use chrono::{DateTime, Utc};
use sqlx::AnyConnection;
use std::collections::HashMap;

/// A lead offered to a team.
pub struct Offer<'a> {
    pub contact: &'a Contact,
    pub contact_id: i64,
    /// The enrollment whose `assign_to_sales` step hands the lead over.
    pub enrollment: Option<i64>,
    /// The rep who just let this lead go (rejected it, or did not accept it in time): never
    /// given it again in a row.
    pub avoid: Option<&'a str>,
    /// A lead waiting in the pool: its row is given to the rep, or stays pooled.
    pub pooled: Option<i64>,
}

/// Where an offered lead went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placed {
    /// A rep has it. `kept`: the contact's open lead in this team, which stays as it is (a
    /// retried step, or a second journey handing over the same contact).
    Rep { lead: i64, rep: String, kept: bool },
    /// No rep had room: the lead waits in the team's pool for the next free slot.
    Pool { lead: i64 },
}

/// What `place` did.
#[derive(Debug, Default)]
pub struct Placement {
    /// One per offer, in order.
    pub placed: Vec<Placed>,
    /// Open leads of other teams that this team took over (closed as `reassigned`, their
    /// slots released).
    pub reassigned: Vec<Lead>,
    /// Round-robin turns used, from the `first_turn` given.
    pub turns: i64,
    /// Leads given to each rep (by rep id), not yet counted in `rep_load`: the caller adds them
    /// with `leads::add_load` just before it commits (see `place`).
    pub taken: Vec<(String, i64)>,
}

/// Places leads with the team's reps in the caller's transaction, from round-robin turn
/// `first_turn` on: reps are chosen in memory, then leads and owners are written with a few
/// statements for all of them. A contact holds one open lead: one in this team is kept, ones in
/// other teams are closed (and a unique index holds that against concurrent workers).
///
/// The reps' counters are read, not locked, and `pending` adds what the caller's transaction
/// has taken but not counted yet. The caller counts `Placement::taken` with the guarded
/// `leads::add_load` as the last writes before its commit, so the counter rows are locked for
/// a moment rather than for the whole transaction (events, reactions); a rep filled meanwhile
/// by another worker fails the guard, and the caller runs the assignment again.
pub async fn place(
    connection: &mut AnyConnection,
    team: &Team,
    offers: &[Offer<'_>],
    now: DateTime<Utc>,
    first_turn: i64,
    pending: &HashMap<String, i64>,
) -> Result<Placement, Error> {
    let contact_ids: Vec<i64> = offers.iter().map(|offer| offer.contact_id).collect();
    let mut open_by_contact: HashMap<i64, Vec<Lead>> = HashMap::new();
    for lead in leads::open_of_contacts(connection, &contact_ids).await? {
        open_by_contact.entry(lead.contact_id).or_default().push(lead);
    }
    let rep_ids: Vec<&str> = team.reps.iter().map(|rep| rep.id.as_str()).collect();
    let mut open = leads::rep_loads(connection, &team.id, &rep_ids).await?;
    for (index, rep) in team.reps.iter().enumerate() {
        open[index] += pending.get(&rep.id).copied().unwrap_or(0);
    }
    let accept_by = team.accept_within.map(|within| now + within.as_duration());
    let mut placement = Placement::default();
    let mut taken = vec![0i64; team.reps.len()];
    let mut rows: Vec<NewLead<'_>> = Vec::new();
    // Where each new row's outcome is in `placement.placed`, to fill in its id once inserted.
    let mut row_of: Vec<usize> = Vec::new();
    let mut from_pool: Vec<(i64, &str)> = Vec::new();
    let mut owners: Vec<(i64, Option<&str>)> = Vec::new();
    let mut turn = first_turn;
    // A contact offered twice in one call (two enrollments handing it over together) keeps
    // the first offer's lead: where that is in `placement.placed`.
    let mut first_offer: HashMap<i64, usize> = HashMap::new();
    let mut repeats: Vec<(usize, usize)> = Vec::new();
    for offer in offers {
        if offer.pooled.is_none()
            && let Some(&first) = first_offer.get(&offer.contact_id)
        {
            repeats.push((placement.placed.len(), first));
            placement.placed.push(Placed::Pool { lead: 0 });
            continue;
        }
        first_offer.insert(offer.contact_id, placement.placed.len());
        let held = open_by_contact.remove(&offer.contact_id).unwrap_or_default();
        let (here, elsewhere): (Vec<Lead>, Vec<Lead>) = held.into_iter().partition(|lead| lead.team == team.id);
        if offer.pooled.is_none()
            && let Some(lead) = here.first()
        {
            placement.placed.push(match lead.status {
                Status::Pooled => Placed::Pool { lead: lead.id },
                _ => Placed::Rep {
                    lead: lead.id,
                    rep: lead.rep.clone(),
                    kept: true,
                },
            });
            continue;
        }
        for lead in elsewhere {
            let closing = leads::Closing {
                to: Status::Reassigned,
                reason: Some(&team.id),
                revenue: None,
                currency: None,
            };
            if let Some(before) = leads::close(connection, lead.id, &[lead.status], &closing, now).await? {
                if before.status.holds_slot() {
                    leads::release(connection, &before.team, &before.rep).await?;
                }
                placement.reassigned.push(before);
            }
        }
        // The rep to avoid counts as full, for this lead only.
        let mut view = open.clone();
        if let Some(avoid) = offer.avoid
            && let Some(index) = team.reps.iter().position(|rep| rep.id == avoid)
        {
            view[index] = i64::MAX;
        }
        let chosen = choose(team, offer.contact, &view, turn, now);
        if let Some(rep) = chosen {
            turn += 1;
            if let Some(index) = team.reps.iter().position(|r| r.id == rep.id) {
                open[index] += 1;
                taken[index] += 1;
            }
        }
        owners.push((offer.contact_id, chosen.map(|rep| rep.id.as_str())));
        match (offer.pooled, chosen) {
            (Some(lead), Some(rep)) => {
                from_pool.push((lead, rep.id.as_str()));
                placement.placed.push(Placed::Rep {
                    lead,
                    rep: rep.id.clone(),
                    kept: false,
                });
            }
            (Some(lead), None) => placement.placed.push(Placed::Pool { lead }),
            (None, chosen) => {
                row_of.push(placement.placed.len());
                rows.push(NewLead {
                    contact_id: offer.contact_id,
                    enrollment_id: offer.enrollment,
                    team: &team.id,
                    rep: chosen.map(|rep| rep.id.as_str()),
                    accept_by: chosen.and(accept_by),
                    previous_rep: offer.avoid,
                    told: team.is_silent(),
                });
                placement.placed.push(match chosen {
                    Some(rep) => Placed::Rep {
                        lead: 0,
                        rep: rep.id.clone(),
                        kept: false,
                    },
                    None => Placed::Pool { lead: 0 },
                });
            }
        }
    }
    placement.taken = team
        .reps
        .iter()
        .zip(&taken)
        .filter(|(_, taken)| **taken > 0)
        .map(|(rep, taken)| (rep.id.clone(), *taken))
        .collect();
    let ids = leads::insert_many(connection, &rows, now).await?;
    for (id, index) in ids.into_iter().zip(row_of) {
        match &mut placement.placed[index] {
            Placed::Rep { lead, .. } | Placed::Pool { lead } => *lead = id,
        }
    }
    for (lead, rep) in from_pool {
        leads::take_from_pool(connection, lead, rep, accept_by, now).await?;
    }
    for (repeat, first) in repeats {
        placement.placed[repeat] = match &placement.placed[first] {
            Placed::Rep { lead, rep, .. } => Placed::Rep {
                lead: *lead,
                rep: rep.clone(),
                kept: true,
            },
            pool => pool.clone(),
        };
    }
    leads::set_owners(connection, &owners).await?;
    placement.turns = turn - first_turn;
    Ok(placement)
}

/// The strategy itself, pure: `open[i]` is rep i's open leads, `turn` the number of leads the
/// team was given before this one (round robin starts at rep `turn % reps`).
pub fn choose<'a>(team: &'a Team, contact: &Contact, open: &[i64], turn: i64, now: DateTime<Utc>) -> Option<&'a Rep> {
    let has_room = |index: usize| {
        team.reps[index]
            .capacity
            .is_none_or(|capacity| open[index] < i64::from(capacity))
    };
    let count = team.reps.len();
    match team.strategy {
        Strategy::RoundRobin => (0..count)
            .map(|offset| (turn as usize + offset) % count)
            .find(|&i| has_room(i))
            .map(|i| &team.reps[i]),
        Strategy::LeastLoaded => (0..count)
            .filter(|&i| has_room(i))
            .min_by_key(|&i| open[i])
            .map(|i| &team.reps[i]),
        Strategy::Territory => {
            let view: ContactFacts = contact.facts_view();
            let facts = contact.facts(&view, None, None, now, &NoHistory);
            let covers = |rep: &Rep| rep.territory.as_ref().is_some_and(|t| t.eval_bool(&facts) == Ok(true));
            (0..count)
                .find(|&i| covers(&team.reps[i]) && has_room(i))
                // Reps without a territory take whatever nobody covers.
                .or_else(|| {
                    (0..count)
                        .filter(|&i| team.reps[i].territory.is_none() && has_room(i))
                        .min_by_key(|&i| open[i])
                })
                .map(|i| &team.reps[i])
        }
    }
}

struct NoHistory;

impl EventCounter for NoHistory {
    fn count_events(&self, _: &str, _: DateTime<Utc>) -> i64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::{Expr, Place, Want};

    fn team(strategy: Strategy, reps: &[(&str, Option<u32>, Option<&str>)]) -> Team {
        Team {
            id: "inbound".into(),
            name: "Inbound".into(),
            strategy,
            accept_within: None,
            notify: Default::default(),
            reps: reps
                .iter()
                .map(|&(id, capacity, territory)| Rep {
                    id: id.into(),
                    name: id.into(),
                    email: None,
                    phone: None,
                    capacity,
                    territory: territory.map(|source| Expr::compile(source, Place::Audience, Want::Bool).unwrap()),
                })
                .collect(),
        }
    }

    fn pick(team: &Team, contact: &Contact, open: &[i64], turn: i64) -> Option<String> {
        choose(team, contact, open, turn, DateTime::default()).map(|rep| rep.id.clone())
    }

    #[test]
    fn round_robin_starts_at_the_turn_and_skips_full_reps() {
        let team = team(
            Strategy::RoundRobin,
            &[("ann", Some(2), None), ("bo", Some(2), None), ("cy", None, None)],
        );
        let contact = Contact::default();
        let picks: Vec<_> = (0..4).map(|turn| pick(&team, &contact, &[0, 0, 0], turn)).collect();
        assert_eq!(picks, ["ann", "bo", "cy", "ann"].map(|id| Some(id.to_string())));
        assert_eq!(pick(&team, &contact, &[0, 2, 0], 1).as_deref(), Some("cy"));
        assert_eq!(pick(&team, &contact, &[2, 2, 7], 0).as_deref(), Some("cy"));
    }

    #[test]
    fn no_rep_is_chosen_when_every_rep_is_full() {
        let team = team(Strategy::LeastLoaded, &[("ann", Some(1), None), ("bo", Some(3), None)]);
        assert_eq!(pick(&team, &Contact::default(), &[1, 3], 0), None);
    }

    #[test]
    fn least_loaded_takes_the_rep_with_fewest_open_leads_and_room() {
        let team = team(Strategy::LeastLoaded, &[("ann", Some(5), None), ("bo", Some(2), None)]);
        assert_eq!(pick(&team, &Contact::default(), &[3, 1], 9).as_deref(), Some("bo"));
        assert_eq!(pick(&team, &Contact::default(), &[3, 2], 9).as_deref(), Some("ann"));
    }

    #[test]
    fn territory_goes_to_the_covering_rep_then_to_reps_without_one() {
        let team = team(
            Strategy::Territory,
            &[
                ("li", Some(1), Some(r#"traits.region == "Shanghai""#)),
                ("max", None, None),
            ],
        );
        let mut shanghai = Contact::default();
        shanghai.traits.insert("region".into(), "Shanghai".into());
        assert_eq!(pick(&team, &shanghai, &[0, 0], 0).as_deref(), Some("li"));
        assert_eq!(pick(&team, &shanghai, &[1, 0], 0).as_deref(), Some("max"));
        assert_eq!(pick(&team, &Contact::default(), &[0, 0], 0).as_deref(), Some("max"));
    }
}
