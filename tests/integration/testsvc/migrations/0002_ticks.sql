-- the singleton ticker's runs: which process ran it, and when
CREATE TABLE ticks (
    pid    int         NOT NULL,
    ran_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
