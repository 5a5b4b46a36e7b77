-- Views for BI tools. Days and hours are local to the configured time zone (settings.timezone).

-- SET search_path FROM CURRENT binds `settings` to this schema whatever the caller's search_path.
CREATE FUNCTION report_timezone() RETURNS text
    LANGUAGE sql STABLE
    SET search_path FROM CURRENT
    AS $$ SELECT value FROM settings WHERE key = 'timezone' $$;

CREATE VIEW hourly_traffic AS
SELECT
    COALESCE(i.instance_id, o.instance_id)                       AS instance_id,
    COALESCE(i.media_type, o.media_type)                         AS media_type,
    COALESCE(i.stats_time, o.stats_time)                         AS stats_time,
    (COALESCE(i.stats_time, o.stats_time) AT TIME ZONE report_timezone()) AS local_time,
    COALESCE(i.total_calls, 0)              AS inbound_calls,
    COALESCE(i.calls_handled, 0)            AS calls_handled,
    COALESCE(i.calls_queued, 0)             AS calls_queued,
    COALESCE(i.calls_abandoned_in_ivr, 0)   AS abandoned_in_ivr,
    COALESCE(i.calls_abandoned_in_queue, 0) AS abandoned_in_queue,
    COALESCE(i.calls_abandoned_in_ring, 0)  AS abandoned_in_ring,
    COALESCE(o.total_calls, 0)              AS outbound_calls,
    COALESCE(o.calls_answered, 0)           AS outbound_answered,
    a.max_logged_in_agents
FROM inbound_trend i
FULL OUTER JOIN outbound_trend o
    ON o.instance_id = i.instance_id AND o.media_type = i.media_type AND o.stats_time = i.stats_time
LEFT JOIN overall_trend a
    ON a.instance_id = COALESCE(i.instance_id, o.instance_id)
   AND a.media_type = COALESCE(i.media_type, o.media_type)
   AND a.stats_time = COALESCE(i.stats_time, o.stats_time);

CREATE VIEW daily_traffic AS
SELECT
    instance_id,
    media_type,
    local_time::date                                   AS day,
    sum(inbound_calls)::bigint                         AS inbound_calls,
    sum(calls_handled)::bigint                         AS calls_handled,
    sum(calls_queued)::bigint                          AS calls_queued,
    sum(abandoned_in_ivr)::bigint                      AS abandoned_in_ivr,
    sum(abandoned_in_queue)::bigint                    AS abandoned_in_queue,
    sum(abandoned_in_ring)::bigint                     AS abandoned_in_ring,
    round(sum(calls_handled)::numeric / NULLIF(sum(inbound_calls), 0), 4)      AS answer_rate,
    round(sum(abandoned_in_ivr)::numeric / NULLIF(sum(inbound_calls), 0), 4)   AS ivr_abandon_rate,
    round(sum(abandoned_in_queue)::numeric / NULLIF(sum(calls_queued), 0), 4)  AS queue_abandon_rate,
    round(sum(abandoned_in_ring)::numeric
          / NULLIF(sum(calls_queued) - sum(abandoned_in_queue), 0), 4)         AS ring_abandon_rate,
    sum(outbound_calls)::bigint                        AS outbound_calls,
    sum(outbound_answered)::bigint                     AS outbound_answered,
    round(sum(outbound_answered)::numeric / NULLIF(sum(outbound_calls), 0), 4) AS outbound_connect_rate,
    max(max_logged_in_agents)                          AS max_logged_in_agents,
    count(*)                                           AS buckets
FROM hourly_traffic
GROUP BY instance_id, media_type, local_time::date;
