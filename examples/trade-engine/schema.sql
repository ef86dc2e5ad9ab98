-- Reference trade-engine schema used by the pgpulse demo and integration tests.
--
-- Load into a fresh database as one batch (psql -f, or batch_execute). Not idempotent.
--   orders       partitioned by month on created_at: orders_YYYY_MM for the current month -3 .. +3
--                (bounds at UTC month starts) + orders_default
--   trades       partitioned by day on executed_at:  trades_YYYY_MM_DD for today -7 .. +14
--                (bounds at UTC midnight) + trades_default
--   order_book, market_data, candles: plain tables
-- The partition names and bounds are the scheme monitoring.create_future_order_partitions() and
-- monitoring.create_future_trade_partitions() continue.

CREATE TABLE orders (
    id              bigint GENERATED ALWAYS AS IDENTITY,
    user_id         bigint        NOT NULL,
    symbol          text          NOT NULL,
    side            text          NOT NULL CHECK (side IN ('buy', 'sell')),
    order_type      text          NOT NULL DEFAULT 'limit'
                                  CHECK (order_type IN ('market', 'limit', 'stop', 'stop_limit')),
    price           numeric(20,8) CHECK (price IS NULL OR price > 0),
    quantity        numeric(20,8) NOT NULL CHECK (quantity > 0),
    filled_quantity numeric(20,8) NOT NULL DEFAULT 0 CHECK (filled_quantity >= 0),
    status          text          NOT NULL DEFAULT 'open'
                                  CHECK (status IN ('open', 'partially_filled', 'filled', 'cancelled')),
    created_at      timestamptz   NOT NULL DEFAULT now(),
    updated_at      timestamptz   NOT NULL DEFAULT now(),
    PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);

CREATE TABLE trades (
    id             bigint GENERATED ALWAYS AS IDENTITY,
    symbol         text          NOT NULL,
    price          numeric(20,8) NOT NULL CHECK (price > 0),
    quantity       numeric(20,8) NOT NULL CHECK (quantity > 0),
    maker_order_id bigint        NOT NULL,
    taker_order_id bigint        NOT NULL,
    maker_user_id  bigint        NOT NULL,
    taker_user_id  bigint        NOT NULL,
    executed_at    timestamptz   NOT NULL DEFAULT now(),
    PRIMARY KEY (id, executed_at)
) PARTITION BY RANGE (executed_at);

-- Partitions relative to now(), at UTC period starts. now() AT TIME ZONE 'UTC' is the UTC wall-clock
-- time (a timestamp); truncating and adding months/days to it gives the UTC boundary, which is written
-- as an explicit ISO literal with offset +00 ('2026-11-01 00:00:00+00'), so the bounds do not depend on
-- the session's TimeZone or DateStyle (a timestamptz printed as e.g. '... IST' would be read back
-- as Israel time).
DO $$
DECLARE
    v_month timestamp := date_trunc('month', now() AT TIME ZONE 'UTC');
    v_day   timestamp := date_trunc('day', now() AT TIME ZONE 'UTC');
    v_from  timestamp;
    i       integer;
BEGIN
    FOR i IN -3 .. 3 LOOP
        v_from := v_month + make_interval(months => i);
        EXECUTE format('CREATE TABLE %I PARTITION OF orders FOR VALUES FROM (%L) TO (%L)',
                       'orders_' || to_char(v_from, 'YYYY_MM'),
                       to_char(v_from, 'YYYY-MM-DD HH24:MI:SS') || '+00',
                       to_char(v_from + interval '1 month', 'YYYY-MM-DD HH24:MI:SS') || '+00');
    END LOOP;
    FOR i IN -7 .. 14 LOOP
        v_from := v_day + make_interval(days => i);
        EXECUTE format('CREATE TABLE %I PARTITION OF trades FOR VALUES FROM (%L) TO (%L)',
                       'trades_' || to_char(v_from, 'YYYY_MM_DD'),
                       to_char(v_from, 'YYYY-MM-DD HH24:MI:SS') || '+00',
                       to_char(v_from + interval '1 day', 'YYYY-MM-DD HH24:MI:SS') || '+00');
    END LOOP;
END
$$;

CREATE TABLE orders_default PARTITION OF orders DEFAULT;
CREATE TABLE trades_default PARTITION OF trades DEFAULT;

CREATE TABLE order_book (
    symbol      text          NOT NULL,
    side        text          NOT NULL CHECK (side IN ('buy', 'sell')),
    price       numeric(20,8) NOT NULL CHECK (price > 0),
    quantity    numeric(20,8) NOT NULL CHECK (quantity >= 0),
    order_count integer       NOT NULL DEFAULT 0 CHECK (order_count >= 0),
    updated_at  timestamptz   NOT NULL DEFAULT now(),
    PRIMARY KEY (symbol, side, price)
);

CREATE TABLE market_data (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    symbol     text          NOT NULL,
    ts         timestamptz   NOT NULL DEFAULT now(),
    last_price numeric(20,8) NOT NULL,
    bid        numeric(20,8),
    ask        numeric(20,8),
    volume     numeric(28,8) NOT NULL DEFAULT 0
);

CREATE TABLE candles (
    symbol    text          NOT NULL,
    interval  text          NOT NULL CHECK (interval IN ('1m', '5m', '15m', '1h', '4h', '1d')),
    open_time timestamptz   NOT NULL,
    open      numeric(20,8) NOT NULL,
    high      numeric(20,8) NOT NULL,
    low       numeric(20,8) NOT NULL,
    close     numeric(20,8) NOT NULL,
    volume    numeric(28,8) NOT NULL DEFAULT 0,
    PRIMARY KEY (symbol, interval, open_time)
);

-- The seven indexes of the trade engine (partitioned indexes cascade to every partition).
CREATE INDEX idx_orders_user_status           ON orders (user_id, status);
CREATE INDEX idx_orders_status_created        ON orders (status, created_at);
CREATE INDEX idx_orderbook_symbol_side_price  ON order_book (symbol, side, price);
CREATE INDEX idx_trades_symbol_time           ON trades (symbol, executed_at);
CREATE INDEX idx_trades_maker_user_time       ON trades (maker_user_id, executed_at);
CREATE INDEX idx_market_data_symbol_timestamp ON market_data (symbol, ts);
CREATE INDEX idx_candles_symbol_interval_time ON candles (symbol, interval, open_time);
