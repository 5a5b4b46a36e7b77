{#- The same arithmetic as ccc-etl's PostgreSQL views (migrations/*_views.sql). -#}

{# A timestamptz as wall-clock time in the report zone (a timestamp without zone). #}
{% macro local_time(column) -%}
    ({{ column }} at time zone '{{ var("ccc_etl_timezone") }}')
{%- endmacro %}

{# num / den rounded to 4 places; NULL when den is 0. Exact (numeric) on PostgreSQL. #}
{% macro rate(num, den) -%}
    {{ return(adapter.dispatch('rate', 'ccc_etl')(num, den)) }}
{%- endmacro %}

{% macro default__rate(num, den) -%}
    round(cast({{ num }} as numeric) / nullif({{ den }}, 0), 4)
{%- endmacro %}

{# DuckDB divides decimals in floating point, where 7/160 = 0.04375 rounds to 0.0437; this
   rounds half up in integers, as PostgreSQL's numeric does (counts are never negative). #}
{% macro duckdb__rate(num, den) -%}
    cast(((20000 * ({{ num }}) + ({{ den }})) // nullif(2 * ({{ den }}), 0)) * 0.0001 as decimal(18, 4))
{%- endmacro %}

{# The KPI columns of one period, over int_ccc_traffic_buckets. #}
{% macro kpi_columns() -%}
    cast(sum(inbound_calls) as bigint)        as inbound_calls,
    cast(sum(calls_handled) as bigint)        as calls_handled,
    cast(sum(calls_queued) as bigint)         as calls_queued,
    cast(sum(abandoned_in_ivr) as bigint)     as abandoned_in_ivr,
    cast(sum(abandoned_in_queue) as bigint)   as abandoned_in_queue,
    cast(sum(abandoned_in_ring) as bigint)    as abandoned_in_ring,
    {{ rate('sum(calls_handled)', 'sum(inbound_calls)') }}    as answer_rate,
    {{ rate('sum(abandoned_in_ivr)', 'sum(inbound_calls)') }} as ivr_abandon_rate,
    {{ rate('sum(abandoned_in_queue)', 'sum(calls_queued)') }} as queue_abandon_rate,
    {{ rate('sum(abandoned_in_ring)', 'sum(calls_queued) - sum(abandoned_in_queue)') }} as ring_abandon_rate,
    cast(sum(outbound_calls) as bigint)       as outbound_calls,
    cast(sum(outbound_answered) as bigint)    as outbound_answered,
    {{ rate('sum(outbound_answered)', 'sum(outbound_calls)') }} as outbound_connect_rate,
    max(max_logged_in_agents)                 as max_logged_in_agents,
    count(*)                                  as buckets
{%- endmacro %}

{# One mart: the KPIs per instance, media type and period starting at `period_start`. #}
{% macro kpi_mart(period_start, period_column) -%}
select
    instance_id,
    media_type,
    {{ period_start }} as {{ period_column }},
    {{ kpi_columns() }}
from {{ ref('int_ccc_traffic_buckets') }}
group by instance_id, media_type, {{ period_start }}
{%- endmacro %}
