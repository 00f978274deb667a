//! `send_email` and `send_sms`, with every rule that may stop a message, decided here before
//! anything is recorded: an address, consent, quiet hours and frequency caps (the workspace's
//! from `nurture.toml` and the journey's own, both of which hold).
//!
//! A suppressed message is no effect: nothing is sent, it does not count toward any cap, the
//! step's history says why, and the contact goes on to the next step. A message due in quiet
//! hours is held until they end, then every rule is checked again.

use crate::engine::transition::{Effect, Mover, Park, Position, zone_for};
use crate::journey::model::StepIndex;
use crate::journey::templates::MailClass;
use crate::journey::values::{FrequencyCap, QuietHours};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Channel {
    Email,
    Sms,
}

/// Why a message was not sent: the detail of its `suppressed` history row.
#[derive(Clone, Debug, PartialEq)]
enum Suppression {
    NoAddress(Channel),
    OptedOut(Channel),
    FrequencyCap {
        cap: FrequencyCap,
        set_by: &'static str,
        sent: u32,
    },
}

impl fmt::Display for Suppression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Suppression::NoAddress(Channel::Email) => write!(f, "the contact has no email address"),
            Suppression::NoAddress(Channel::Sms) => write!(f, "the contact has no phone number"),
            Suppression::OptedOut(Channel::Email) => write!(f, "the contact opted out of marketing email"),
            Suppression::OptedOut(Channel::Sms) => write!(f, "the contact opted out of SMS"),
            Suppression::FrequencyCap { cap, set_by, sent } => write!(
                f,
                "frequency cap {cap} ({set_by}): {sent} message{} in the last {}",
                if *sent == 1 { "" } else { "s" },
                cap.window
            ),
        }
    }
}

const WORKSPACE: &str = "nurture.toml";
const JOURNEY: &str = "journey settings";

pub(super) fn run(
    mover: &mut Mover<'_>,
    step: StepIndex,
    channel: Channel,
    template: &str,
    released: bool,
) -> Position {
    let next = mover.journey.steps[step].next;
    if let Some(reason) = before_hours(mover, channel, template) {
        mover.record(step, "suppressed", reason.to_string());
        return mover.go(next);
    }
    if !released {
        let zone = zone_for(mover.journey, mover.world.contact);
        let hours = quiet_hours(mover);
        let release = release_time(&hours, mover.world.now, zone);
        if release > mover.world.now {
            let shown: Vec<String> = hours
                .iter()
                .filter(|(quiet, _)| quiet.contains(mover.world.now.with_timezone(&zone).time()))
                .map(|(quiet, set_by)| format!("{quiet} ({set_by})"))
                .collect();
            mover.record(
                step,
                "deferred",
                format!(
                    "quiet hours {}; sending at {}",
                    shown.join(" and "),
                    release.with_timezone(&zone).format("%a %H:%M %Z")
                ),
            );
            return Position::Parked {
                step,
                until: release,
                reason: Park::QuietHours,
            };
        }
    }
    if let Some(reason) = capped(mover) {
        mover.record(step, "suppressed", reason.to_string());
        return mover.go(next);
    }
    let effect = match channel {
        Channel::Email => Effect::SendEmail {
            template: template.into(),
        },
        Channel::Sms => Effect::SendSms {
            template: template.into(),
        },
    };
    mover.effect(step, effect);
    mover.record(step, "sent", template);
    mover.go(next)
}

/// What stops a message whatever the time: no address, or no consent. Transactional email
/// (receipts) needs no consent; marketing email and every SMS do.
fn before_hours(mover: &Mover<'_>, channel: Channel, template: &str) -> Option<Suppression> {
    let contact = mover.world.contact;
    let address = match channel {
        Channel::Email => contact.email.as_deref(),
        Channel::Sms => contact.phone.as_deref(),
    };
    if address.is_none_or(|a| a.trim().is_empty()) {
        return Some(Suppression::NoAddress(channel));
    }
    let needs_consent = match channel {
        Channel::Email => {
            let templates = &mover.world.catalog.templates;
            templates.email_class(template, contact.language()) != Some(MailClass::Transactional)
        }
        Channel::Sms => true,
    };
    let name = match channel {
        Channel::Email => "email",
        Channel::Sms => "sms",
    };
    (needs_consent && !contact.allows(name)).then_some(Suppression::OptedOut(channel))
}

/// Every quiet-hours range that holds for this journey, with where it was set.
fn quiet_hours<'a>(mover: &Mover<'a>) -> Vec<(&'a QuietHours, &'static str)> {
    let workspace = mover.world.catalog.guardrails.quiet_hours.as_ref();
    let journey = mover.journey.settings.quiet_hours.as_ref();
    let mut hours: Vec<(&QuietHours, &'static str)> = Vec::new();
    hours.extend(journey.map(|q| (q, JOURNEY)));
    hours.extend(workspace.map(|q| (q, WORKSPACE)));
    hours
}

/// The first moment at or after `now` outside every range (ranges may end inside each other).
fn release_time(hours: &[(&QuietHours, &'static str)], now: DateTime<Utc>, zone: Tz) -> DateTime<Utc> {
    let mut at = now;
    for _ in 0..=hours.len() {
        let later = hours.iter().fold(at, |t, (quiet, _)| quiet.release_time(t, zone));
        if later == at {
            break;
        }
        at = later;
    }
    at
}

/// The first cap the contact has reached: the journey's, then the workspace's.
fn capped(mover: &Mover<'_>) -> Option<Suppression> {
    let caps = [
        (mover.journey.settings.frequency_cap, JOURNEY),
        (mover.world.catalog.guardrails.frequency_cap, WORKSPACE),
    ];
    caps.into_iter().find_map(|(cap, set_by)| {
        let cap = cap?;
        let sent = mover
            .world
            .history
            .messages_since(mover.world.now - cap.window.as_duration());
        (sent >= cap.messages).then_some(Suppression::FrequencyCap { cap, set_by, sent })
    })
}
