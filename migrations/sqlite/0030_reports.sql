-- ROI reports (engine/reports.rs): the facts the other tables do not keep in columns, the
-- price list, and daily rollups. Money is in micro-units (1 = 0.000001 of a currency) so
-- sums are exact integers; the workspace currency is `[reports] currency` of nurture.toml.

-- Opens, clicks and unsubscribes of a journey's messages, with the journey and step as columns
-- (the events keep them inside their JSON properties, which reports never parse).
CREATE TABLE touches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    contact_id BIGINT NOT NULL,
    journey_id TEXT NOT NULL,
    step TEXT NOT NULL,
    channel TEXT NOT NULL,
    -- opened, clicked, unsubscribed
    kind TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX touches_by_contact ON touches (contact_id, at);
CREATE INDEX touches_by_time ON touches (at);

-- Revenue events (`Order Completed`, `Lead Won`, or those `[reports.revenue_events]` names):
-- the amount read once, at ingest.
CREATE TABLE revenue_events (
    event_id BIGINT PRIMARY KEY,
    contact_id BIGINT NOT NULL,
    name TEXT NOT NULL,
    -- In the event's own currency.
    amount BIGINT NOT NULL,
    currency TEXT NOT NULL,
    -- In the workspace currency; NULL when nurture.toml has no rate for `currency`.
    value BIGINT,
    -- When the order happened (the event's time), and when nurture stored it.
    at BIGINT NOT NULL,
    recorded_at BIGINT NOT NULL
);
CREATE INDEX revenue_events_recorded ON revenue_events (recorded_at);
CREATE INDEX revenue_events_by_contact ON revenue_events (contact_id);

-- The price of one message per channel, from `[reports.costs]`, with the time it applies
-- from: a message costs what its channel cost when it was sent, whatever the price is now.
CREATE TABLE unit_costs (
    channel TEXT NOT NULL,
    cost BIGINT NOT NULL,
    since BIGINT NOT NULL,
    until BIGINT,
    PRIMARY KEY (channel, since)
);

-- When a contact reached a stage (MQL, SQL, customer), for the time spent in each.
CREATE TABLE stage_changes (
    contact_id BIGINT NOT NULL,
    stage TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX stage_changes_by_contact ON stage_changes (contact_id, stage);

-- Rollups: one row per UTC day (ms at midnight) and journey, step and channel. Kept by the
-- holder of the `reports` lease, which adds every fact stored before `rolled_until`.
CREATE TABLE report_days (
    day BIGINT NOT NULL,
    journey_id TEXT NOT NULL,
    step TEXT NOT NULL,
    channel TEXT NOT NULL,
    enrolled BIGINT NOT NULL DEFAULT 0,
    sent BIGINT NOT NULL DEFAULT 0,
    delivered BIGINT NOT NULL DEFAULT 0,
    opened BIGINT NOT NULL DEFAULT 0,
    clicked BIGINT NOT NULL DEFAULT 0,
    unsubscribed BIGINT NOT NULL DEFAULT 0,
    cost BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (day, journey_id, step, channel)
);

-- The credit for conversions of that day, per attribution model. Revenue with no touch in
-- the lookback window has empty journey, step and channel: `unattributed`.
CREATE TABLE report_credits (
    day BIGINT NOT NULL,
    model TEXT NOT NULL,
    journey_id TEXT NOT NULL,
    step TEXT NOT NULL,
    channel TEXT NOT NULL,
    -- Thousandths of a conversion.
    conversions BIGINT NOT NULL DEFAULT 0,
    revenue BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (day, model, journey_id, step, channel)
);

-- Revenue in a currency nurture.toml gives no rate for: reported apart, never added.
CREATE TABLE report_unconverted (
    day BIGINT NOT NULL,
    currency TEXT NOT NULL,
    conversions BIGINT NOT NULL DEFAULT 0,
    amount BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (day, currency)
);

CREATE TABLE report_watermark (
    id INTEGER PRIMARY KEY,
    rolled_until BIGINT NOT NULL
);
INSERT INTO report_watermark (id, rolled_until) VALUES (1, 0);

-- The rollup reads the facts stored in a time range.
CREATE INDEX enrollments_by_entry ON enrollments (entered_at);
CREATE INDEX effects_by_creation ON effects (created_at);
CREATE INDEX effects_by_done ON effects (done_at) WHERE status = 'done';
CREATE INDEX conversions_by_time ON conversions (at);
