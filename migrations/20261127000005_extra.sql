-- Fields of a row that ccc-etl does not know (yet), as the API sent them: NULL when there are
-- none. Adopting one is a column of its own, filled from here while still inside the horizon.
ALTER TABLE inbound_trend ADD COLUMN extra jsonb;
ALTER TABLE outbound_trend ADD COLUMN extra jsonb;
ALTER TABLE overall_trend ADD COLUMN extra jsonb;
