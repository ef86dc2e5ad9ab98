-- Small, fast (well under a second), repeatable-ish data set for the reference trade engine.
-- Run as one batch after schema.sql. Rows land only in the regular partitions, never in the
-- DEFAULT partitions: orders within the last 60 days (always inside the current month -3 .. now),
-- trades within the last 7 days (inside today -7 .. today).
--   5 symbols, 2000 orders, 2000 trades, 200 order book levels, 1000 market data ticks,
--   600 one-minute and 120 one-hour candles.
-- Works with and without an enclosing transaction (the temporary helper table is dropped at the end).

SELECT setseed(0.4242);

CREATE TEMP TABLE seed_symbols (n integer PRIMARY KEY, symbol text NOT NULL, base_price numeric NOT NULL);
INSERT INTO seed_symbols VALUES
    (1, 'BTC-USD', 60000), (2, 'ETH-USD', 3000), (3, 'SOL-USD', 150), (4, 'ADA-USD', 0.45), (5, 'XRP-USD', 0.60);

-- Orders: 2000, spread over the last 60 days.
INSERT INTO orders (user_id, symbol, side, order_type, price, quantity, filled_quantity, status, created_at, updated_at)
SELECT o.user_id, s.symbol, o.side, o.order_type,
       CASE WHEN o.order_type = 'market' THEN NULL
            ELSE round(s.base_price * (0.95 + 0.1 * o.r_price::numeric), 8) END,
       o.quantity,
       CASE o.status WHEN 'filled' THEN o.quantity
                     WHEN 'partially_filled' THEN round(o.quantity * o.r_fill::numeric, 8)
                     ELSE 0 END,
       o.status, o.created_at, o.created_at + (o.r_fill * interval '10 minutes')
  FROM (SELECT g,
               1 + floor(random() * 500)::bigint AS user_id,
               1 + floor(random() * 5)::int AS sym,
               CASE WHEN random() < 0.5 THEN 'buy' ELSE 'sell' END AS side,
               (ARRAY['limit', 'limit', 'limit', 'market', 'stop_limit'])[1 + floor(random() * 5)::int] AS order_type,
               random() AS r_price,
               round((0.01 + random() * 5)::numeric, 8) AS quantity,
               random() AS r_fill,
               (ARRAY['open', 'partially_filled', 'filled', 'filled', 'cancelled'])[1 + floor(random() * 5)::int] AS status,
               now() - random() * interval '60 days' AS created_at
          FROM generate_series(1, 2000) AS g) o
  JOIN seed_symbols s ON s.n = o.sym;

-- Trades: 2000 within the last 7 days, between existing order ids.
INSERT INTO trades (symbol, price, quantity, maker_order_id, taker_order_id, maker_user_id, taker_user_id, executed_at)
SELECT s.symbol,
       round(s.base_price * (0.97 + 0.06 * t.r_price::numeric), 8),
       round((0.001 + t.r_qty * 2)::numeric, 8),
       1 + floor(t.r_maker * 2000)::bigint,
       1 + floor(t.r_taker * 2000)::bigint,
       1 + floor(t.r_maker * 500)::bigint,
       1 + floor(t.r_taker * 500)::bigint,
       now() - t.r_time * interval '7 days'
  FROM (SELECT g, 1 + floor(random() * 5)::int AS sym, random() AS r_price, random() AS r_qty,
               random() AS r_maker, random() AS r_taker, random() * 0.999 AS r_time
          FROM generate_series(1, 2000) AS g) t
  JOIN seed_symbols s ON s.n = t.sym;

-- Order book: 20 levels per side per symbol.
INSERT INTO order_book (symbol, side, price, quantity, order_count, updated_at)
SELECT s.symbol, sd.side,
       round(s.base_price * CASE sd.side WHEN 'buy' THEN 1 - lvl * 0.001 ELSE 1 + lvl * 0.001 END, 8),
       round((0.1 + random() * 10)::numeric, 8),
       1 + floor(random() * 20)::int,
       now() - random() * interval '1 minute'
  FROM seed_symbols s
 CROSS JOIN (VALUES ('buy'), ('sell')) AS sd(side)
 CROSS JOIN generate_series(1, 20) AS lvl;

-- Market data: 200 ticks per symbol over the last 200 minutes.
INSERT INTO market_data (symbol, ts, last_price, bid, ask, volume)
SELECT s.symbol,
       now() - make_interval(mins => k),
       round(s.base_price * (0.98 + 0.04 * m.r::numeric), 8),
       round(s.base_price * (0.98 + 0.04 * m.r::numeric) * 0.9995, 8),
       round(s.base_price * (0.98 + 0.04 * m.r::numeric) * 1.0005, 8),
       round((random() * 1000)::numeric, 8)
  FROM seed_symbols s
 CROSS JOIN generate_series(1, 200) AS k
 CROSS JOIN LATERAL (SELECT random() AS r, k AS kk) m;

-- Candles: 120 one-minute and 24 one-hour candles per symbol.
INSERT INTO candles (symbol, interval, open_time, open, high, low, close, volume)
SELECT s.symbol, c.iv,
       date_trunc(c.unit, now()) - c.step * k,
       round(s.base_price * (0.99 + 0.02 * c.r1::numeric), 8),
       round(s.base_price * (1.01 + 0.01 * c.r2::numeric), 8),
       round(s.base_price * (0.98 - 0.01 * c.r3::numeric), 8),
       round(s.base_price * (0.99 + 0.02 * c.r4::numeric), 8),
       round((random() * 500)::numeric, 8)
  FROM seed_symbols s
 CROSS JOIN (VALUES ('1m', 'minute', interval '1 minute', 120), ('1h', 'hour', interval '1 hour', 24))
            AS spec(iv, unit, step, n)
 CROSS JOIN LATERAL generate_series(1, spec.n) AS k
 CROSS JOIN LATERAL (SELECT spec.iv, spec.unit, spec.step, random() AS r1, random() AS r2,
                            random() AS r3, random() AS r4, k AS kk) c;

DROP TABLE seed_symbols;
