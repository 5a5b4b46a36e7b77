{{ kpi_mart("cast(date_trunc('month', local_time) as date)", 'month_start') }}
