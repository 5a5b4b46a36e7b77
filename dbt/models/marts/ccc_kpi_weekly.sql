{{ kpi_mart("cast(date_trunc('week', local_time) as date)", 'week_start') }}
