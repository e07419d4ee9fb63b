-- The pipeline's figures kept as they change, per customer owner (visibility follows the
-- customer's owner), so that a request reads a few rows per owner instead of aggregating every
-- opportunity and stay. The pipeline unit moves them in each batch's transaction: what the
-- batch's opportunities counted for before the batch goes out, what they count for after
-- comes in. Seconds are numeric(20,6): exact (microseconds), so sums taken out and put back
-- cancel exactly and a rebuild gives the same rows.

-- Each customer's owner, as the pipeline sees it (registration, reassignment).
CREATE TABLE pipeline_customers (
    customer_id uuid PRIMARY KEY,
    owner       text NOT NULL
);

-- Per opportunity and stage it has been in: its stays, the time of those that ended, the stay
-- in progress (an open opportunity's current stage) and, while there, the amount it holds.
CREATE TABLE stage_durations (
    opportunity_id uuid          NOT NULL,
    stage          text          NOT NULL,
    customer_owner text          NOT NULL,
    visits         integer       NOT NULL,
    ended_seconds  numeric(20,6) NOT NULL,
    in_stage_since timestamptz,
    open_amount    bigint        NOT NULL,
    -- ended_seconds - epoch(in_stage_since): its total time in the stage at `t` is
    -- epoch(t) + open_key, so the longest of them is found by an index
    open_key       numeric(20,6),
    PRIMARY KEY (opportunity_id, stage)
);
CREATE INDEX stage_durations_longest_ended ON stage_durations (customer_owner, stage, ended_seconds)
    WHERE in_stage_since IS NULL;
CREATE INDEX stage_durations_longest_open ON stage_durations (customer_owner, stage, open_key)
    WHERE in_stage_since IS NOT NULL;

-- Per customer owner and stage: how many opportunities reached it, their stays, the time of
-- the stays ended, and the opportunities open in it now (count, amount, sum of since).
CREATE TABLE pipeline_stage_totals (
    customer_owner     text          NOT NULL,
    stage              text          NOT NULL,
    reached            bigint        NOT NULL,
    visits             bigint        NOT NULL,
    ended_seconds      numeric(20,6) NOT NULL,
    open_count         bigint        NOT NULL,
    open_amount        bigint        NOT NULL,
    open_since_seconds numeric(26,6) NOT NULL,
    PRIMARY KEY (customer_owner, stage)
);

-- Per customer owner: open, won and lost opportunities, and the sales cycles of those won.
CREATE TABLE pipeline_owner_totals (
    customer_owner    text          NOT NULL PRIMARY KEY,
    open_count        bigint        NOT NULL,
    won_count         bigint        NOT NULL,
    lost_count        bigint        NOT NULL,
    won_cycle_seconds numeric(26,6) NOT NULL
);

-- The open opportunities per customer owner, expected-close month and opportunity owner
-- ('' while not assigned): the weighted forecast's terms.
CREATE TABLE pipeline_forecast (
    customer_owner    text          NOT NULL,
    month             date          NOT NULL,
    owner             text          NOT NULL,
    opportunities     bigint        NOT NULL,
    amount            bigint        NOT NULL,
    weighted_amount   numeric(26,2) NOT NULL,
    PRIMARY KEY (customer_owner, month, owner)
);

-- The rows of `stage_durations` of these opportunities, from their stays.
CREATE FUNCTION stage_durations_of(ids uuid[])
RETURNS TABLE (
    opportunity_id uuid,
    stage          text,
    customer_owner text,
    visits         integer,
    ended_seconds  numeric,
    in_stage_since timestamptz,
    open_amount    bigint,
    open_key       numeric
)
LANGUAGE sql STABLE SET search_path FROM CURRENT AS $$
    SELECT d.id, d.stage, d.owner, d.visits, d.ended, d.since,
           CASE WHEN d.since IS NULL THEN 0 ELSE d.amount END,
           d.ended - extract(epoch FROM d.since)
      FROM (SELECT h.opportunity_id AS id, h.stage, p.owner, count(*)::integer AS visits,
                   coalesce(sum(extract(epoch FROM h.left_at - h.entered_at)), 0) AS ended,
                   max(h.entered_at) FILTER (WHERE h.left_at IS NULL) AS since,
                   max(o.amount) AS amount
              FROM stage_history h
              JOIN opportunities o ON o.opportunity_id = h.opportunity_id
              JOIN pipeline_customers p ON p.customer_id = o.customer_id
             WHERE h.opportunity_id = ANY(ids)
             GROUP BY h.opportunity_id, h.stage, p.owner) d
$$;

-- What these opportunities count for in each table of totals: rows of the table's columns.
CREATE FUNCTION pipeline_stage_totals_of(ids uuid[])
RETURNS TABLE (
    customer_owner     text,
    stage              text,
    reached            bigint,
    visits             bigint,
    ended_seconds      numeric,
    open_count         bigint,
    open_amount        bigint,
    open_since_seconds numeric
)
LANGUAGE sql STABLE SET search_path FROM CURRENT AS $$
    SELECT d.customer_owner, d.stage, count(*), sum(d.visits)::bigint, sum(d.ended_seconds),
           count(d.in_stage_since), sum(d.open_amount)::bigint,
           coalesce(sum(extract(epoch FROM d.in_stage_since)), 0)
      FROM stage_durations d
     WHERE d.opportunity_id = ANY(ids)
     GROUP BY d.customer_owner, d.stage
$$;

CREATE FUNCTION pipeline_owner_totals_of(ids uuid[])
RETURNS TABLE (
    customer_owner    text,
    open_count        bigint,
    won_count         bigint,
    lost_count        bigint,
    won_cycle_seconds numeric
)
LANGUAGE sql STABLE SET search_path FROM CURRENT AS $$
    SELECT p.owner,
           count(*) FILTER (WHERE o.status = 'open'),
           count(*) FILTER (WHERE o.status = 'won'),
           count(*) FILTER (WHERE o.status = 'lost'),
           coalesce(sum(extract(epoch FROM o.closed_at - o.opened_at))
                    FILTER (WHERE o.status = 'won'), 0)
      FROM opportunities o
      JOIN pipeline_customers p ON p.customer_id = o.customer_id
     WHERE o.opportunity_id = ANY(ids)
     GROUP BY p.owner
$$;

CREATE FUNCTION pipeline_forecast_of(ids uuid[])
RETURNS TABLE (
    customer_owner  text,
    month           date,
    owner           text,
    opportunities   bigint,
    amount          bigint,
    weighted_amount numeric
)
LANGUAGE sql STABLE SET search_path FROM CURRENT AS $$
    SELECT p.owner, date_trunc('month', o.expected_close)::date, coalesce(o.owner, ''),
           count(*), sum(o.amount)::bigint, sum(o.amount::numeric * o.probability) / 100
      FROM opportunities o
      JOIN pipeline_customers p ON p.customer_id = o.customer_id
     WHERE o.opportunity_id = ANY(ids) AND o.status = 'open'
     GROUP BY 1, 2, 3
$$;

-- A version that already holds opportunities gets its totals from them.
INSERT INTO pipeline_customers (customer_id, owner)
SELECT customer_id, owner FROM customers;
INSERT INTO stage_durations
SELECT * FROM stage_durations_of(ARRAY(SELECT opportunity_id FROM opportunities));
INSERT INTO pipeline_stage_totals
SELECT * FROM pipeline_stage_totals_of(ARRAY(SELECT opportunity_id FROM opportunities));
INSERT INTO pipeline_owner_totals
SELECT * FROM pipeline_owner_totals_of(ARRAY(SELECT opportunity_id FROM opportunities));
INSERT INTO pipeline_forecast
SELECT * FROM pipeline_forecast_of(ARRAY(SELECT opportunity_id FROM opportunities));

-- The pipeline is read from the totals now (query-service); the per-request aggregates over
-- a caller's opportunities go. The views of 0001 stay: the whole company's figures from the
-- opportunities themselves.
DROP FUNCTION weighted_forecast_of(text[]);
DROP FUNCTION pipeline_summary_of(text[]);
DROP FUNCTION funnel_of(text[]);
DROP FUNCTION stage_times_of(timestamptz, text[]);
DROP FUNCTION visible_opportunities(text[]);

-- A page of customers in name or registration order reads the index, not the whole table.
CREATE INDEX customers_by_name ON customers (name, customer_id);
CREATE INDEX customers_by_registration ON customers (registered_at, customer_id);
