-- The read models of one projection version. This file runs with `search_path` set to the
-- version's own schema (e.g. `rm_v1`), so every name below lands in that schema, and the
-- functions capture it (`SET search_path FROM CURRENT`). Nothing here is processing time:
-- every timestamp is business time (occurred-at), except in the audit trail, which keeps both,
-- and the alerts, which a sweep opens at its `now`. So a rebuild from offset zero gives the
-- same rows.

-- ------------------------------------------------------------------ customer 360

CREATE TABLE customers (
    customer_id    uuid        PRIMARY KEY,
    kind           text        NOT NULL,
    number         text,
    name           text        NOT NULL,
    region         text        NOT NULL,
    industry       text        NOT NULL,
    level          text        NOT NULL,
    credit         smallint    NOT NULL,
    satisfaction   smallint    NOT NULL,
    registration   jsonb       NOT NULL DEFAULT '{}',
    owner          text        NOT NULL,
    registered_at  timestamptz NOT NULL,
    -- active | at_risk | lost
    churn_status   text        NOT NULL DEFAULT 'active',
    churn_case_id  uuid,
    -- from the orders (all currencies summed as minor units: one reporting currency assumed)
    order_count    bigint      NOT NULL DEFAULT 0,
    order_total    bigint      NOT NULL DEFAULT 0,
    last_order_at  timestamptz,
    last_sequence  bigint      NOT NULL,
    last_event_at  timestamptz NOT NULL
);
CREATE INDEX customers_owner ON customers (owner);
CREATE INDEX customers_level ON customers (level);

CREATE TABLE contacts (
    customer_id    uuid   NOT NULL,
    contact_id     uuid   NOT NULL,
    name           text   NOT NULL,
    gender         text,
    position       text,
    office_phone   text,
    mobile         text,
    email          text,
    memo           text,
    added_sequence bigint NOT NULL,
    PRIMARY KEY (customer_id, contact_id)
);

-- count and last touchpoint per channel
CREATE TABLE touchpoint_stats (
    customer_id uuid        NOT NULL,
    channel     text        NOT NULL,
    touchpoints bigint      NOT NULL,
    last_at     timestamptz NOT NULL,
    PRIMARY KEY (customer_id, channel)
);

CREATE TABLE service_requests (
    service_request_id uuid        PRIMARY KEY,
    customer_id        uuid        NOT NULL,
    kind               text        NOT NULL,
    summary            text        NOT NULL,
    -- created | assigned | handled | satisfied | archived (feedback below 3: back to assigned)
    status             text        NOT NULL,
    assignee           text,
    created_at         timestamptz NOT NULL,
    handled_at         timestamptz,
    satisfaction       smallint,
    feedback_count     integer     NOT NULL DEFAULT 0,
    archived_at        timestamptz
);
CREATE INDEX service_requests_customer ON service_requests (customer_id);
CREATE INDEX service_requests_created ON service_requests (created_at);

CREATE TABLE complaints (
    complaint_id  uuid        PRIMARY KEY,
    customer_id   uuid        NOT NULL,
    category      text        NOT NULL,
    sub_category  text        NOT NULL,
    urgency       text        NOT NULL,
    importance    text        NOT NULL,
    -- lodged | handled | closed
    status        text        NOT NULL,
    lodged_at     timestamptz NOT NULL,
    handled_at    timestamptz,
    closed_at     timestamptz
);
CREATE INDEX complaints_customer ON complaints (customer_id);

CREATE TABLE orders (
    customer_id  uuid        NOT NULL,
    order_number text        NOT NULL,
    ordered_at   timestamptz NOT NULL,
    amount       bigint      NOT NULL,
    currency     text        NOT NULL,
    lines        jsonb       NOT NULL,
    sequence     bigint      NOT NULL,
    PRIMARY KEY (customer_id, order_number)
);
CREATE INDEX orders_ordered_at ON orders (ordered_at);

-- ------------------------------------------------------------------ timeline

-- Every event of a customer, read in (occurred_at, sequence) order: a late event lands in
-- its place.
CREATE TABLE timeline (
    customer_id uuid        NOT NULL,
    sequence    bigint      NOT NULL,
    event_id    uuid        NOT NULL,
    occurred_at timestamptz NOT NULL,
    event_type  text        NOT NULL,
    -- touchpoint | state_change
    category    text        NOT NULL,
    channel     text,
    direction   text,
    summary     text        NOT NULL,
    actor       text        NOT NULL,
    -- the opportunity, service request, complaint, contact, ... the event is about
    subject_id  text,
    PRIMARY KEY (customer_id, sequence)
);
CREATE INDEX timeline_order ON timeline (customer_id, occurred_at, sequence);

-- ------------------------------------------------------------------ pipeline

CREATE TABLE opportunities (
    opportunity_id uuid        PRIMARY KEY,
    customer_id    uuid        NOT NULL,
    title          text        NOT NULL,
    source         text        NOT NULL,
    amount         bigint      NOT NULL,
    currency       text        NOT NULL,
    probability    smallint    NOT NULL,
    expected_close date        NOT NULL,
    owner          text,
    stage          text        NOT NULL,
    stage_since    timestamptz NOT NULL,
    -- open | won | lost
    status         text        NOT NULL,
    opened_at      timestamptz NOT NULL,
    closed_at      timestamptz,
    lost_reason    text
);
CREATE INDEX opportunities_customer ON opportunities (customer_id);
CREATE INDEX opportunities_open ON opportunities (stage) WHERE status = 'open';

-- One row per stay in a stage; left_at is NULL while the opportunity is there.
CREATE TABLE stage_history (
    opportunity_id   uuid        NOT NULL,
    entered_sequence bigint      NOT NULL,
    stage            text        NOT NULL,
    entered_at       timestamptz NOT NULL,
    left_at          timestamptz,
    -- advanced | moved_back | won | lost (NULL while in the stage)
    left_by          text,
    PRIMARY KEY (opportunity_id, entered_sequence)
);
CREATE UNIQUE INDEX stage_history_current ON stage_history (opportunity_id) WHERE left_at IS NULL;

CREATE TABLE funnel_stages (
    stage text    PRIMARY KEY,
    ord   integer NOT NULL UNIQUE
);
INSERT INTO funnel_stages (stage, ord) VALUES
    ('qualification', 1), ('proposal', 2), ('evaluation', 3), ('negotiation', 4), ('won', 5);

-- Per opportunity and stage: visits, the latest stay and the cumulative time, measured up to
-- `as_of` for the stay in progress.
CREATE FUNCTION stage_times(as_of timestamptz)
RETURNS TABLE (
    opportunity_id     uuid,
    stage              text,
    visits             bigint,
    latest_entered_at  timestamptz,
    latest_seconds     double precision,
    cumulative_seconds double precision
)
LANGUAGE sql STABLE SET search_path FROM CURRENT AS $$
    SELECT h.opportunity_id,
           h.stage,
           count(*),
           (array_agg(h.entered_at ORDER BY h.entered_sequence DESC))[1],
           (array_agg(extract(epoch FROM coalesce(h.left_at, as_of) - h.entered_at)::float8
                      ORDER BY h.entered_sequence DESC))[1],
           sum(extract(epoch FROM coalesce(h.left_at, as_of) - h.entered_at))::float8
      FROM stage_history h
     GROUP BY h.opportunity_id, h.stage
$$;

-- Funnel: open count and amount per stage; how many opportunities ever reached each stage
-- (`won` last), and the conversion from each stage to the next.
CREATE VIEW funnel AS
WITH per_stage AS (
    SELECT s.ord,
           s.stage,
           (SELECT count(*) FROM opportunities o
             WHERE o.status = 'open' AND o.stage = s.stage) AS open_count,
           (SELECT coalesce(sum(o.amount), 0)::bigint FROM opportunities o
             WHERE o.status = 'open' AND o.stage = s.stage) AS open_amount,
           CASE WHEN s.stage = 'won'
                THEN (SELECT count(*) FROM opportunities o WHERE o.status = 'won')
                ELSE (SELECT count(DISTINCT h.opportunity_id) FROM stage_history h
                       WHERE h.stage = s.stage)
           END AS reached_count
      FROM funnel_stages s
)
SELECT ord, stage, open_count, open_amount, reached_count,
       CASE WHEN reached_count = 0 THEN NULL
            ELSE (lead(reached_count) OVER (ORDER BY ord))::float8 / reached_count
       END AS conversion_to_next
  FROM per_stage;

-- Win rate over ended opportunities and the average sales cycle (opened → won), in days.
CREATE VIEW pipeline_summary AS
SELECT count(*) FILTER (WHERE status = 'open') AS open_count,
       count(*) FILTER (WHERE status = 'won')  AS won_count,
       count(*) FILTER (WHERE status = 'lost') AS lost_count,
       CASE WHEN count(*) FILTER (WHERE status IN ('won', 'lost')) = 0 THEN NULL
            ELSE (count(*) FILTER (WHERE status = 'won'))::float8
                 / count(*) FILTER (WHERE status IN ('won', 'lost'))
       END AS win_rate,
       (avg(extract(epoch FROM closed_at - opened_at)) FILTER (WHERE status = 'won') / 86400)::float8
           AS avg_sales_cycle_days
  FROM opportunities;

-- Weighted forecast (amount × probability) of open opportunities by expected-close month and
-- owner (NULL: not assigned yet).
CREATE VIEW weighted_forecast AS
SELECT date_trunc('month', expected_close)::date AS month,
       owner,
       count(*)                                 AS opportunities,
       sum(amount)::bigint                      AS amount,
       (sum(amount::numeric * probability) / 100)::float8 AS weighted_amount
  FROM opportunities
 WHERE status = 'open'
 GROUP BY 1, 2;

-- ------------------------------------------------------------------ stage-duration alerts

CREATE TABLE stage_alerts (
    alert_id       uuid        PRIMARY KEY,
    opportunity_id uuid        NOT NULL,
    customer_id    uuid        NOT NULL,
    stage          text        NOT NULL,
    stage_since    timestamptz NOT NULL,
    threshold_days integer     NOT NULL,
    due_at         timestamptz NOT NULL,
    opened_at      timestamptz NOT NULL,
    closed_at      timestamptz,
    -- stage_changed | won | lost
    closed_by      text
);
CREATE UNIQUE INDEX stage_alerts_one_open ON stage_alerts (opportunity_id) WHERE closed_at IS NULL;

-- Every alert opened or closed, for the publisher to put on the alerts topic (outbox).
CREATE TABLE alert_outbox (
    id           bigserial   PRIMARY KEY,
    alert_id     uuid        NOT NULL,
    -- opened | closed
    change       text        NOT NULL,
    at           timestamptz NOT NULL,
    payload      jsonb       NOT NULL,
    published_at timestamptz
);
CREATE INDEX alert_outbox_unpublished ON alert_outbox (id) WHERE published_at IS NULL;

-- ------------------------------------------------------------------ audit trail

CREATE TABLE audit_trail (
    event_id       uuid        PRIMARY KEY,
    customer_id    uuid        NOT NULL,
    sequence       bigint      NOT NULL,
    event_type     text        NOT NULL,
    source         text        NOT NULL,
    actor          text        NOT NULL,
    occurred_at    timestamptz NOT NULL,
    recorded_at    timestamptz NOT NULL,
    -- the event body: the fields it set or changed
    changes        jsonb       NOT NULL,
    command        text,
    command_id     text,
    correlation_id uuid        NOT NULL,
    causation_id   uuid,
    topic          text        NOT NULL,
    "partition"    integer     NOT NULL,
    "offset"       bigint      NOT NULL,
    UNIQUE (customer_id, sequence),
    UNIQUE (topic, "partition", "offset")
);
CREATE INDEX audit_trail_actor ON audit_trail (actor, recorded_at);
CREATE INDEX audit_trail_correlation ON audit_trail (correlation_id);

-- ------------------------------------------------------------------ RFM

-- Scored customers only; a customer without a row has the segment `no_purchases`.
CREATE TABLE rfm (
    customer_id  uuid     PRIMARY KEY,
    recency_days integer  NOT NULL,
    frequency    integer  NOT NULL,
    monetary     bigint   NOT NULL,
    r            smallint NOT NULL,
    f            smallint NOT NULL,
    m            smallint NOT NULL,
    segment      text     NOT NULL
);

-- Bumped by every applied order; a recompute records the value it saw.
CREATE TABLE rfm_state (
    id             boolean PRIMARY KEY DEFAULT true CHECK (id),
    orders_version bigint  NOT NULL
);
INSERT INTO rfm_state (id, orders_version) VALUES (true, 0);

CREATE TABLE rfm_runs (
    id             boolean     PRIMARY KEY DEFAULT true CHECK (id),
    as_of          timestamptz NOT NULL,
    window_days    integer     NOT NULL,
    orders_version bigint      NOT NULL,
    scored         integer     NOT NULL
);

CREATE VIEW rfm_segment_sizes AS
SELECT s.segment, count(c.customer_id) AS customers
  FROM (VALUES ('champions'), ('loyal'), ('potential_loyalists'), ('new'), ('promising'),
               ('need_attention'), ('about_to_sleep'), ('at_risk'), ('cant_lose_them'),
               ('hibernating'), ('no_purchases')) AS s(segment)
  LEFT JOIN (SELECT c.customer_id, coalesce(r.segment, 'no_purchases') AS segment
               FROM customers c LEFT JOIN rfm r USING (customer_id)) c
         ON c.segment = s.segment
 GROUP BY s.segment;

-- ------------------------------------------------------------------ churn

CREATE TABLE churn_cases (
    churn_case_id       uuid        PRIMARY KEY,
    customer_id         uuid        NOT NULL,
    -- at_risk | lost | reactivated
    status              text        NOT NULL,
    warned_at           timestamptz NOT NULL,
    warning_reason      text        NOT NULL,
    last_order_at       timestamptz,
    confirmed_at        timestamptz,
    confirmed_reason    text,
    reactivated_at      timestamptz,
    reactivation_reason text
);
CREATE INDEX churn_cases_customer ON churn_cases (customer_id);

CREATE TABLE churn_measures (
    churn_case_id uuid        NOT NULL,
    sequence      bigint      NOT NULL,
    measure       text        NOT NULL,
    recorded_at   timestamptz NOT NULL,
    actor         text        NOT NULL,
    PRIMARY KEY (churn_case_id, sequence)
);

-- ------------------------------------------------------------------ the 360° view

CREATE VIEW customer_360 AS
SELECT c.customer_id, c.kind, c.number, c.name, c.region, c.industry, c.level, c.credit,
       c.satisfaction, c.registration, c.owner, c.registered_at, c.churn_status,
       c.churn_case_id, c.order_count, c.order_total, c.last_order_at, c.last_sequence,
       c.last_event_at,
       coalesce((SELECT jsonb_agg(jsonb_build_object(
                        'contact_id', k.contact_id, 'name', k.name, 'gender', k.gender,
                        'position', k.position, 'office_phone', k.office_phone,
                        'mobile', k.mobile, 'email', k.email, 'memo', k.memo)
                        ORDER BY k.added_sequence)
                   FROM contacts k WHERE k.customer_id = c.customer_id), '[]') AS contacts,
       coalesce((SELECT jsonb_agg(jsonb_build_object(
                        'channel', t.channel, 'touchpoints', t.touchpoints, 'last_at', t.last_at)
                        ORDER BY t.channel)
                   FROM touchpoint_stats t WHERE t.customer_id = c.customer_id), '[]') AS touchpoints,
       coalesce((SELECT jsonb_agg(jsonb_build_object(
                        'opportunity_id', o.opportunity_id, 'title', o.title, 'stage', o.stage,
                        'stage_since', o.stage_since, 'amount', o.amount, 'currency', o.currency,
                        'probability', o.probability, 'owner', o.owner)
                        ORDER BY o.opened_at, o.opportunity_id)
                   FROM opportunities o
                  WHERE o.customer_id = c.customer_id AND o.status = 'open'), '[]') AS open_opportunities,
       (SELECT count(*) FROM service_requests s
         WHERE s.customer_id = c.customer_id AND s.status <> 'archived') AS open_service_requests,
       (SELECT count(*) FROM complaints p
         WHERE p.customer_id = c.customer_id AND p.status <> 'closed') AS open_complaints,
       r.recency_days, r.frequency, r.monetary, r.r, r.f, r.m,
       coalesce(r.segment, 'no_purchases') AS segment
  FROM customers c
  LEFT JOIN rfm r USING (customer_id);
