-- The trading schema's shape at any size, for the benchmarks (scripts/bench-sampling-cost,
-- scripts/soak, benches/sampling_cost.rs). Needs the reference trade-engine schema
-- (examples/trade-engine/schema.sql) loaded first.
--
--   CALL bench_trading_shape(copies, partitions);
--
-- builds `copies` pairs of orders_hN (partitioned by month on created_at) and trades_hN (by
-- day on executed_at), LIKE the reference orders and trades: their columns, primary keys and
-- indexes, so every partition has a TOAST table and three indexes (4 relations in `public`
-- per partition), and a DEFAULT partition each, as the trade engine runs them. About
-- `partitions` partitions in all, a tenth of each copy's by month (at most 36), the rest by
-- day; the newest end in the future (3 months, 14 days ahead), the rest in the past. Every
-- check that reads time-range bounds (partition runway, DEFAULT rows) pays what production
-- pays. Commits every 100 partitions, so one call stays within max_locks_per_transaction.
CREATE OR REPLACE PROCEDURE public.bench_trading_shape(p_copies integer, p_partitions integer)
LANGUAGE plpgsql
AS $$
DECLARE
    v_per    integer := greatest(2, p_partitions / p_copies);
    v_months integer := least(36, greatest(1, v_per / 10));
    v_days   integer := greatest(1, v_per - v_months);
    v_month  timestamp := date_trunc('month', now() AT TIME ZONE 'UTC');
    v_day    timestamp := date_trunc('day', now() AT TIME ZONE 'UTC');
    v_made   integer := 0;
BEGIN
    FOR k IN 0 .. p_copies - 1 LOOP
        EXECUTE format('CREATE TABLE orders_h%s (LIKE orders INCLUDING ALL) PARTITION BY RANGE (created_at)', k);
        EXECUTE format('CREATE TABLE trades_h%s (LIKE trades INCLUDING ALL) PARTITION BY RANGE (executed_at)', k);
        EXECUTE format('CREATE TABLE orders_h%s_default PARTITION OF orders_h%s DEFAULT', k, k);
        EXECUTE format('CREATE TABLE trades_h%s_default PARTITION OF trades_h%s DEFAULT', k, k);
        COMMIT;
        FOR i IN 1 .. v_months + v_days LOOP
            IF i <= v_months THEN
                CALL public.bench_partition(format('orders_h%s', k), v_month + make_interval(months => 3 - i),
                                            interval '1 month', 'YYYY_MM');
            ELSE
                CALL public.bench_partition(format('trades_h%s', k), v_day + make_interval(days => 14 - (i - v_months)),
                                            interval '1 day', 'YYYY_MM_DD');
            END IF;
            v_made := v_made + 1;
            IF v_made % 100 = 0 THEN
                COMMIT;
            END IF;
        END LOOP;
    END LOOP;
END
$$;

-- One partition of p_parent from p_from (a UTC wall-clock time) for p_span, named by p_format,
-- its bounds written as ISO literals at +00 (independent of TimeZone and DateStyle).
CREATE OR REPLACE PROCEDURE public.bench_partition(p_parent text, p_from timestamp, p_span interval, p_format text)
LANGUAGE plpgsql
AS $$
BEGIN
    EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                   p_parent || '_' || to_char(p_from, p_format), p_parent,
                   to_char(p_from, 'YYYY-MM-DD HH24:MI:SS') || '+00',
                   to_char(p_from + p_span, 'YYYY-MM-DD HH24:MI:SS') || '+00');
END
$$;
