select
    instance_id,
    media_type,
    stats_time,
    {{ local_time('stats_time') }} as local_time,
    max_logged_in_agents,
    fetched_at
from {{ source('ccc_etl', 'overall_trend') }}
