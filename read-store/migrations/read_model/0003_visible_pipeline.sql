-- The pipeline of the customers a caller sees: the same figures as the views `funnel`,
-- `pipeline_summary`, `weighted_forecast` and the function `stage_times` of 0001, over the
-- opportunities of customers owned by one of `owners` (every opportunity when `owners` is
-- NULL). Visibility follows the customer's owner, as everywhere in query-service.

CREATE FUNCTION visible_opportunities(owners text[])
RETURNS SETOF opportunities
LANGUAGE sql STABLE SET search_path FROM CURRENT AS $$
    SELECT o.* FROM opportunities o
     WHERE owners IS NULL
        OR EXISTS (SELECT 1 FROM customers c
                    WHERE c.customer_id = o.customer_id AND c.owner = ANY(owners))
$$;

CREATE FUNCTION stage_times_of(as_of timestamptz, owners text[])
RETURNS TABLE (
    opportunity_id     uuid,
    stage              text,
    visits             bigint,
    latest_entered_at  timestamptz,
    latest_seconds     double precision,
    cumulative_seconds double precision
)
LANGUAGE sql STABLE SET search_path FROM CURRENT AS $$
    SELECT st.* FROM stage_times(as_of) st
     WHERE owners IS NULL
        OR st.opportunity_id IN (SELECT v.opportunity_id FROM visible_opportunities(owners) v)
$$;

CREATE FUNCTION funnel_of(owners text[])
RETURNS TABLE (
    ord                integer,
    stage              text,
    open_count         bigint,
    open_amount        bigint,
    reached_count      bigint,
    conversion_to_next double precision
)
LANGUAGE sql STABLE SET search_path FROM CURRENT AS $$
    WITH o AS (SELECT * FROM visible_opportunities(owners)),
    per_stage AS (
        SELECT s.ord AS o_ord,
               s.stage AS o_stage,
               (SELECT count(*) FROM o WHERE o.status = 'open' AND o.stage = s.stage) AS o_open_count,
               (SELECT coalesce(sum(o.amount), 0)::bigint FROM o
                 WHERE o.status = 'open' AND o.stage = s.stage) AS o_open_amount,
               CASE WHEN s.stage = 'won'
                    THEN (SELECT count(*) FROM o WHERE o.status = 'won')
                    ELSE (SELECT count(DISTINCT h.opportunity_id) FROM stage_history h
                           WHERE h.stage = s.stage
                             AND h.opportunity_id IN (SELECT o.opportunity_id FROM o))
               END AS o_reached_count
          FROM funnel_stages s
    )
    SELECT p.o_ord, p.o_stage, p.o_open_count, p.o_open_amount, p.o_reached_count,
           CASE WHEN p.o_reached_count = 0 THEN NULL
                ELSE (lead(p.o_reached_count) OVER (ORDER BY p.o_ord))::float8 / p.o_reached_count
           END
      FROM per_stage p
$$;

CREATE FUNCTION pipeline_summary_of(owners text[])
RETURNS TABLE (
    open_count           bigint,
    won_count            bigint,
    lost_count           bigint,
    win_rate             double precision,
    avg_sales_cycle_days double precision
)
LANGUAGE sql STABLE SET search_path FROM CURRENT AS $$
    SELECT count(*) FILTER (WHERE o.status = 'open'),
           count(*) FILTER (WHERE o.status = 'won'),
           count(*) FILTER (WHERE o.status = 'lost'),
           CASE WHEN count(*) FILTER (WHERE o.status IN ('won', 'lost')) = 0 THEN NULL
                ELSE (count(*) FILTER (WHERE o.status = 'won'))::float8
                     / count(*) FILTER (WHERE o.status IN ('won', 'lost'))
           END,
           (avg(extract(epoch FROM o.closed_at - o.opened_at)) FILTER (WHERE o.status = 'won') / 86400)::float8
      FROM visible_opportunities(owners) o
$$;

CREATE FUNCTION weighted_forecast_of(owners text[])
RETURNS TABLE (
    month           date,
    owner           text,
    opportunities   bigint,
    amount          bigint,
    weighted_amount double precision
)
LANGUAGE sql STABLE SET search_path FROM CURRENT AS $$
    SELECT date_trunc('month', o.expected_close)::date,
           o.owner,
           count(*),
           sum(o.amount)::bigint,
           (sum(o.amount::numeric * o.probability) / 100)::float8
      FROM visible_opportunities(owners) o
     WHERE o.status = 'open'
     GROUP BY 1, 2
$$;
