-- Production-like volume for the reference trade engine, on top of seed_data.sql, for the key
-- query plan checks (plans.yaml, `pgpulse explain`): on the 2,000 rows of the seed data the
-- planner rightly prefers sequential scans of a few pages, so an index check there says little.
-- Run once after seed_data.sql; a few seconds. Rows land only in the regular partitions.
--   +100,000 orders (last 60 days, 5,000 users), +100,000 trades (last 7 days),
--   +20,000 order book levels, +50,000 market data ticks, +72,000 one-minute candles; ANALYZE.

SELECT setseed(0.1717);

CREATE TEMP TABLE scale_symbols (n integer PRIMARY KEY, symbol text NOT NULL, base_price numeric NOT NULL);
INSERT INTO scale_symbols VALUES
    (1, 'BTC-USD', 60000), (2, 'ETH-USD', 3000), (3, 'SOL-USD', 150), (4, 'ADA-USD', 0.45), (5, 'XRP-USD', 0.60);

INSERT INTO orders (user_id, symbol, side, order_type, price, quantity, filled_quantity, status, created_at, updated_at)
SELECT 1 + floor(random() * 5000)::bigint, s.symbol,
       CASE WHEN random() < 0.5 THEN 'buy' ELSE 'sell' END, 'limit',
       round(s.base_price * (0.95 + 0.1 * random()::numeric), 8),
       1, 0,
       (ARRAY['open', 'partially_filled', 'filled', 'filled', 'cancelled'])[1 + floor(random() * 5)::int],
       o.created_at, o.created_at
  FROM (SELECT 1 + floor(random() * 5)::int AS sym, now() - random() * interval '60 days' AS created_at
          FROM generate_series(1, 100000)) o
  JOIN scale_symbols s ON s.n = o.sym;

INSERT INTO trades (symbol, price, quantity, maker_order_id, taker_order_id, maker_user_id, taker_user_id, executed_at)
SELECT s.symbol, round(s.base_price * (0.97 + 0.06 * random()::numeric), 8), 1,
       1 + floor(random() * 100000)::bigint, 1 + floor(random() * 100000)::bigint,
       1 + floor(random() * 5000)::bigint, 1 + floor(random() * 5000)::bigint,
       now() - random() * 0.999 * interval '7 days'
  FROM (SELECT 1 + floor(random() * 5)::int AS sym FROM generate_series(1, 100000)) t
  JOIN scale_symbols s ON s.n = t.sym;

-- Deeper levels than the seed's (which stay within 2% of the base price).
INSERT INTO order_book (symbol, side, price, quantity, order_count)
SELECT s.symbol, sd.side,
       round(s.base_price * CASE sd.side WHEN 'buy' THEN 1 - (0.03 + lvl * 0.00001)
                                         ELSE 1 + (0.03 + lvl * 0.00001) END, 8),
       1, 1
  FROM scale_symbols s
 CROSS JOIN (VALUES ('buy'), ('sell')) AS sd(side)
 CROSS JOIN generate_series(1, 2000) AS lvl;

INSERT INTO market_data (symbol, ts, last_price, volume)
SELECT s.symbol, now() - interval '200 minutes' - k * interval '12 seconds', s.base_price, 1
  FROM scale_symbols s CROSS JOIN generate_series(1, 10000) AS k;

-- One-minute candles before the oldest of the seed's.
INSERT INTO candles (symbol, interval, open_time, open, high, low, close, volume)
SELECT s.symbol, '1m', f.oldest - k * interval '1 minute',
       s.base_price, s.base_price, s.base_price, s.base_price, 1
  FROM scale_symbols s
 CROSS JOIN (SELECT coalesce(min(open_time), date_trunc('minute', now())) AS oldest
               FROM candles WHERE interval = '1m') f
 CROSS JOIN generate_series(1, 14400) AS k;

DROP TABLE scale_symbols;
ANALYZE orders, trades, order_book, market_data, candles;
