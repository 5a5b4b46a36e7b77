{{ kpi_mart("date_trunc('hour', local_time)", 'local_hour') }}
