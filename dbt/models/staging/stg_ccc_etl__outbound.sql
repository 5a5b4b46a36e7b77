select
    instance_id,
    media_type,
    stats_time,
    {{ local_time('stats_time') }} as local_time,
    total_calls    as outbound_calls,
    calls_answered as outbound_answered,
    fetched_at
from {{ source('ccc_etl', 'outbound_trend') }}
