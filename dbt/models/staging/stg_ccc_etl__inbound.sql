select
    instance_id,
    media_type,
    stats_time,
    {{ local_time('stats_time') }} as local_time,
    total_calls              as inbound_calls,
    calls_handled,
    calls_queued,
    calls_abandoned_in_ivr   as abandoned_in_ivr,
    calls_abandoned_in_queue as abandoned_in_queue,
    calls_abandoned_in_ring  as abandoned_in_ring,
    fetched_at
from {{ source('ccc_etl', 'inbound_trend') }}
