{{ kpi_mart("cast(local_time as date)", 'day') }}
