-- mqstore schema v1 for MySQL 8.0+ / MariaDB 10.8+ (InnoDB).
-- Same data model as schema/sqlite/001_initial.sql:
-- a queue message is one row of mqs_msg (its pending entry is the row itself);
-- a topic message is one row of mqs_msg plus one mqs_pending row per durable
-- subscription; the message row goes when its last pending row goes.
--
-- Names are VARBINARY(255), not VARCHAR utf8mb4: the API defines a name as
-- 1..255 bytes compared exactly, while utf8mb4 collations either fold case
-- (_general_ci) or pad spaces (_bin on MariaDB: 'a' and 'a ' collide in a
-- UNIQUE index). The bytes stored are the caller's UTF-8.
--
-- DDL is not transactional in MySQL: mqs_meta is created last, so a
-- migration that stopped halfway leaves tables without mqs_meta, which the
-- backend reports instead of guessing.
--
-- InnoDB persists the AUTO_INCREMENT counter (MariaDB 10.2.4+, MySQL 8.0),
-- so message ids are never reused, even after the newest row is acked and
-- the server restarts.

CREATE TABLE mqs_dest (
    id   BIGINT NOT NULL AUTO_INCREMENT,
    kind TINYINT NOT NULL,                          -- 0 queue, 1 topic
    name VARBINARY(255) NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY mqs_dest_name (kind, name),
    CONSTRAINT mqs_dest_kind CHECK (kind IN (0, 1))
) ENGINE = InnoDB ROW_FORMAT = DYNAMIC DEFAULT CHARSET = utf8mb4;

CREATE TABLE mqs_sub (
    id         BIGINT NOT NULL AUTO_INCREMENT,
    dest_id    BIGINT NOT NULL,
    name       VARBINARY(255) NOT NULL,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY mqs_sub_name (dest_id, name),
    CONSTRAINT mqs_sub_dest FOREIGN KEY (dest_id) REFERENCES mqs_dest (id)
) ENGINE = InnoDB ROW_FORMAT = DYNAMIC DEFAULT CHARSET = utf8mb4;

CREATE TABLE mqs_msg (
    id           BIGINT NOT NULL AUTO_INCREMENT,
    dest_id      BIGINT NOT NULL,
    kind         TINYINT NOT NULL,
    priority     TINYINT NOT NULL,
    expires_ms   BIGINT NOT NULL DEFAULT 0,
    enqueued_ms  BIGINT NOT NULL,
    redeliveries INT NOT NULL DEFAULT 0,
    headers      LONGBLOB,
    body         LONGBLOB,
    PRIMARY KEY (id),
    -- Delivery order of a queue: priority high to low, then id.
    KEY mqs_msg_order (dest_id, priority DESC, id),
    CONSTRAINT mqs_msg_priority CHECK (priority BETWEEN 0 AND 9)
) ENGINE = InnoDB ROW_FORMAT = DYNAMIC DEFAULT CHARSET = utf8mb4;

CREATE TABLE mqs_pending (
    sub_id       BIGINT NOT NULL,
    msg_id       BIGINT NOT NULL,
    priority     TINYINT NOT NULL,
    redeliveries INT NOT NULL DEFAULT 0,
    PRIMARY KEY (sub_id, msg_id),
    -- Delivery order of a subscription; priority is copied so no join is
    -- needed to order.
    KEY mqs_pending_order (sub_id, priority DESC, msg_id),
    -- "Is any subscription still holding this message?"
    KEY mqs_pending_msg (msg_id)
) ENGINE = InnoDB ROW_FORMAT = DYNAMIC DEFAULT CHARSET = utf8mb4;

-- `key` is a reserved word in MySQL, hence the quotes.
CREATE TABLE mqs_meta (
    `key`   VARCHAR(64) NOT NULL,
    `value` VARCHAR(255) NOT NULL,
    PRIMARY KEY (`key`)
) ENGINE = InnoDB ROW_FORMAT = DYNAMIC DEFAULT CHARSET = utf8mb4;
