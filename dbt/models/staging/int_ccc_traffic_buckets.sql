-- One row per instance, media type and bucket with inbound, outbound and agents side by side:
-- the hourly_traffic view of ccc-etl's PostgreSQL schema.
select
    coalesce(i.instance_id, o.instance_id) as instance_id,
    coalesce(i.media_type, o.media_type)   as media_type,
    coalesce(i.stats_time, o.stats_time)   as stats_time,
    coalesce(i.local_time, o.local_time)   as local_time,
    coalesce(i.inbound_calls, 0)           as inbound_calls,
    coalesce(i.calls_handled, 0)           as calls_handled,
    coalesce(i.calls_queued, 0)            as calls_queued,
    coalesce(i.abandoned_in_ivr, 0)        as abandoned_in_ivr,
    coalesce(i.abandoned_in_queue, 0)      as abandoned_in_queue,
    coalesce(i.abandoned_in_ring, 0)       as abandoned_in_ring,
    coalesce(o.outbound_calls, 0)          as outbound_calls,
    coalesce(o.outbound_answered, 0)       as outbound_answered,
    a.max_logged_in_agents
from {{ ref('stg_ccc_etl__inbound') }} as i
full outer join {{ ref('stg_ccc_etl__outbound') }} as o
    on o.instance_id = i.instance_id
   and o.media_type = i.media_type
   and o.stats_time = i.stats_time
left join {{ ref('stg_ccc_etl__overall') }} as a
    on a.instance_id = coalesce(i.instance_id, o.instance_id)
   and a.media_type = coalesce(i.media_type, o.media_type)
   and a.stats_time = coalesce(i.stats_time, o.stats_time)
