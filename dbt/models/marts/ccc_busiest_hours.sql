-- Inbound calls by hour of the week (ISO day 1 = Monday, local hour 0-23) per instance and
-- media type, ranked: rank 1 is the busiest hour of the week.
with by_hour as (
    select
        instance_id,
        media_type,
        cast(extract(isodow from local_time) as integer) as iso_day_of_week,
        cast(extract(hour from local_time) as integer)   as local_hour_of_day,
        cast(sum(inbound_calls) as bigint)               as inbound_calls,
        count(distinct cast(local_time as date))         as days
    from {{ ref('int_ccc_traffic_buckets') }}
    group by 1, 2, 3, 4
)
select
    instance_id,
    media_type,
    iso_day_of_week,
    local_hour_of_day,
    inbound_calls,
    days,
    {{ rate('inbound_calls', 'days') }} as inbound_calls_per_day,
    cast(rank() over (
        partition by instance_id, media_type
        order by inbound_calls desc, iso_day_of_week, local_hour_of_day
    ) as integer) as busiest_rank
from by_hour
