{# Rows where the combination of `columns` repeats. #}
{% test unique_combination(model, columns) %}
select {{ columns | join(', ') }}, count(*) as n
from {{ model }}
group by {{ columns | join(', ') }}
having count(*) > 1
{% endtest %}


{# Rows where a value lies outside [min_value, max_value] (either bound optional). #}
{% test within_range(model, column_name, min_value=none, max_value=none) %}
select * from {{ model }}
where false
{%- if min_value is not none %} or {{ column_name }} < {{ min_value }}{% endif %}
{%- if max_value is not none %} or {{ column_name }} > {{ max_value }}{% endif %}
{% endtest %}

{# A KPI mart's rows that break its invariants: a count missing or negative, a rate outside
   0..1, a handled, queued or answered count above what it is part of, a period without a
   bucket. #}
{% test kpis_valid(model) %}
select * from {{ model }}
where inbound_calls is null or outbound_calls is null or buckets is null
   or inbound_calls < 0 or calls_handled < 0 or calls_queued < 0 or abandoned_in_ivr < 0
   or abandoned_in_queue < 0 or abandoned_in_ring < 0 or outbound_calls < 0
   or outbound_answered < 0 or max_logged_in_agents < 0 or buckets < 1
   or calls_handled > inbound_calls or outbound_answered > outbound_calls
   or answer_rate < 0 or answer_rate > 1
   or ivr_abandon_rate < 0 or ivr_abandon_rate > 1
   or queue_abandon_rate < 0 or queue_abandon_rate > 1
   or ring_abandon_rate < 0 or ring_abandon_rate > 1
   or outbound_connect_rate < 0 or outbound_connect_rate > 1
{% endtest %}
