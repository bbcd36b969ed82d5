/*
 * sqlite_sql.c - the SQL of the SQLite backend: every statement the module
 * prepares (lazily, once per connection), with its name for messages.
 * The schema itself lives in the migrations of schema/sqlite/ (embedded
 * at build time).
 */
#include "sqlite_int.h"

const struct sq_stmt_def sq_sql[ST_COUNT] = {
    /* IMMEDIATE takes the write lock up front: a deferred transaction that
     * read first could not upgrade while another writer holds the lock,
     * and would fail with SQLITE_BUSY without waiting. The fence relies on
     * it too: from BEGIN IMMEDIATE to COMMIT/ROLLBACK no other connection
     * can write the database, so the lock row read by lock_fence cannot
     * change before this transaction ends. */
    [ST_BEGIN] = {"BEGIN IMMEDIATE", "BEGIN IMMEDIATE"},
    [ST_COMMIT] = {"COMMIT", "COMMIT"},
    [ST_ROLLBACK] = {"ROLLBACK", "ROLLBACK"},
    [ST_MARK_PUT] = {"producer mark",
                     "INSERT INTO mqs_producer_mark (producer, seq, updated_ms) "
                     "VALUES (?1, ?2, ?3) ON CONFLICT (producer) DO UPDATE SET "
                     "seq = max(seq, excluded.seq), "
                     "updated_ms = excluded.updated_ms"},
    [ST_MARK_LIST] = {"producer mark list",
                      "SELECT producer, seq FROM mqs_producer_mark"},
    [ST_MARK_PRUNE] = {"producer mark prune",
                       "DELETE FROM mqs_producer_mark WHERE updated_ms < ?1"},
    [ST_META_SET] = {"recording the schema version in mqs_meta",
                     "INSERT INTO mqs_meta (key, value) "
                     "VALUES ('schema_version', ?1) "
                     "ON CONFLICT (key) DO UPDATE SET value = excluded.value"},
    [ST_DEST_GET] = {"destination lookup",
                     "SELECT id FROM mqs_dest WHERE kind = ?1 AND name = ?2"},
    [ST_DEST_ADD] = {"destination insert",
                     "INSERT INTO mqs_dest (kind, name) VALUES (?1, ?2)"},
    [ST_SUB_ANY] = {"subscription check",
                    "SELECT 1 FROM mqs_sub WHERE dest_id = ?1 LIMIT 1"},
    [ST_MSG_INS] = {"message insert",
                    "INSERT INTO mqs_msg (dest_id, kind, priority, expires_ms,"
                    " enqueued_ms, headers, body) "
                    "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"},
    [ST_PEND_INS] = {"pending-entry insert",
                     "INSERT INTO mqs_pending (sub_id, msg_id, priority) "
                     "SELECT id, ?2, ?3 FROM mqs_sub WHERE dest_id = ?1"},
    [ST_ACK_Q] = {"queue ack",
                  "DELETE FROM mqs_msg WHERE id = ?1 AND kind = 0"},
    [ST_ACK_P] = {"subscription ack",
                  "DELETE FROM mqs_pending WHERE msg_id = ?1 AND sub_id = ?2"},
    [ST_ACK_ORPHAN] = {"acked topic message delete",
                       "DELETE FROM mqs_msg WHERE id = ?1 AND kind = 1 AND "
                       "NOT EXISTS "
                       "(SELECT 1 FROM mqs_pending WHERE msg_id = ?1)"},
    [ST_NACK_Q] = {"queue nack",
                   "UPDATE mqs_msg SET redeliveries = redeliveries + 1 "
                   "WHERE id = ?1 AND kind = 0"},
    [ST_NACK_P] = {"subscription nack",
                   "UPDATE mqs_pending SET redeliveries = redeliveries + 1 "
                   "WHERE msg_id = ?1 AND sub_id = ?2"},
    [ST_SUB_GET] = {"subscription lookup",
                    "SELECT id FROM mqs_sub WHERE dest_id = ?1 AND name = ?2"},
    /* Through mqs_dest so a missing topic (or a queue id) inserts nothing. */
    [ST_SUB_ADD] = {"subscription insert",
                    "INSERT INTO mqs_sub (dest_id, name, created_ms) "
                    "SELECT id, ?2, ?3 FROM mqs_dest "
                    "WHERE id = ?1 AND kind = 1"},
    /* Before the pending rows go: the messages only this subscription
     * still holds. */
    [ST_SUB_RM_ORPHANS] = {"subscription removal (orphaned messages)",
                           "DELETE FROM mqs_msg WHERE kind = 1 AND id IN "
                           "(SELECT msg_id FROM mqs_pending WHERE sub_id = ?1)"
                           " AND NOT EXISTS (SELECT 1 FROM mqs_pending p "
                           "WHERE p.msg_id = mqs_msg.id AND p.sub_id <> ?1)"},
    [ST_SUB_RM_PEND] = {"subscription removal (pending entries)",
                        "DELETE FROM mqs_pending WHERE sub_id = ?1"},
    [ST_SUB_RM] = {"subscription removal",
                   "DELETE FROM mqs_sub WHERE id = ?1"},
    [ST_PURGE_ALL_Q] = {"purge (queue messages)",
                        "DELETE FROM mqs_msg WHERE kind = 0"},
    [ST_PURGE_ALL_P] = {"purge (pending entries)", "DELETE FROM mqs_pending"},
    [ST_PURGE_ALL_M] = {"purge (topic messages)", "DELETE FROM mqs_msg"},
    [ST_PURGE_Q] = {"purge (queue messages)",
                    "DELETE FROM mqs_msg WHERE dest_id = ?1 AND kind = 0"},
    [ST_PURGE_P] = {"purge (pending entries)",
                    "DELETE FROM mqs_pending WHERE sub_id IN "
                    "(SELECT id FROM mqs_sub WHERE dest_id = ?1)"},
    [ST_PURGE_M] = {"purge (topic messages)",
                    "DELETE FROM mqs_msg WHERE dest_id = ?1 AND kind = 1"},
    [ST_SUB_LOOKUP] = {"subscription lookup",
                       "SELECT s.id FROM mqs_dest d "
                       "CROSS JOIN mqs_sub s ON s.dest_id = d.id "
                       "WHERE d.kind = 1 AND d.name = ?1 AND s.name = ?2"},
    /* A page is read in two index range scans (rest of the key's priority,
     * then the lower priorities): one query with
     * "priority < ? OR (priority = ? AND id > ?)" makes SQLite scan the
     * whole priority level from its start on every page, which turns a
     * recovery into O(n^2). */
    [ST_PAGE_Q_EQ] = {"queue page read",
                      "SELECT id, priority, expires_ms, enqueued_ms, "
                      "redeliveries, headers, body FROM mqs_msg "
                      "WHERE dest_id = ?1 AND priority = ?2 AND id > ?3 "
                      "AND kind = 0 ORDER BY id LIMIT ?4"},
    [ST_PAGE_Q_LT] = {"queue page read",
                      "SELECT id, priority, expires_ms, enqueued_ms, "
                      "redeliveries, headers, body FROM mqs_msg "
                      "WHERE dest_id = ?1 AND priority < ?2 AND kind = 0 "
                      "ORDER BY priority DESC, id LIMIT ?3"},
    /* CROSS JOIN pins the loop order (here and in ST_SUB_LOOKUP): pending
     * rows drive, messages are fetched by rowid. */
    [ST_PAGE_S_EQ] = {"subscription page read",
                      "SELECT p.msg_id, p.priority, m.expires_ms, "
                      "m.enqueued_ms, p.redeliveries, m.headers, m.body "
                      "FROM mqs_pending p CROSS JOIN mqs_msg m "
                      "ON m.id = p.msg_id "
                      "WHERE p.sub_id = ?1 AND p.priority = ?2 "
                      "AND p.msg_id > ?3 ORDER BY p.msg_id LIMIT ?4"},
    [ST_PAGE_S_LT] = {"subscription page read",
                      "SELECT p.msg_id, p.priority, m.expires_ms, "
                      "m.enqueued_ms, p.redeliveries, m.headers, m.body "
                      "FROM mqs_pending p CROSS JOIN mqs_msg m "
                      "ON m.id = p.msg_id "
                      "WHERE p.sub_id = ?1 AND p.priority < ?2 "
                      "ORDER BY p.priority DESC, p.msg_id LIMIT ?3"},
    /* Counts come from index-only scans; "oldest" is the enqueue time of
     * the lowest id (the first committed), one row lookup instead of
     * reading every row for min(enqueued_ms). A queue's messages all have
     * kind 0 (ids are unique across kinds), so no kind filter is needed.
     * min(+x), not min(x): the unary + turns off the min/max shortcut that
     * would walk the whole table (or msg_id index) in id order until it met
     * the destination's first row; this way it scans only that range. */
    [ST_DEST_LIST] =
        {"destination list",
         "SELECT d.id, 0, d.name, 0, NULL,"
         " (SELECT count(*) FROM mqs_msg m WHERE m.dest_id = d.id),"
         " (SELECT enqueued_ms FROM mqs_msg WHERE id ="
         "   (SELECT min(+m.id) FROM mqs_msg m WHERE m.dest_id = d.id))"
         " FROM mqs_dest d WHERE d.kind = 0 "
         "UNION ALL "
         "SELECT d.id, 1, d.name, s.id, s.name,"
         " (SELECT count(*) FROM mqs_pending p WHERE p.sub_id = s.id),"
         " (SELECT enqueued_ms FROM mqs_msg WHERE id ="
         "   (SELECT min(+p.msg_id) FROM mqs_pending p WHERE p.sub_id = s.id))"
         " FROM mqs_sub s CROSS JOIN mqs_dest d ON d.id = s.dest_id"
         " WHERE +d.kind = 1 " /* + : fetch d by rowid, not scan by kind */
         "UNION ALL "
         "SELECT d.id, 1, d.name, 0, NULL, 0, NULL FROM mqs_dest d"
         " WHERE d.kind = 1 AND NOT EXISTS"
         " (SELECT 1 FROM mqs_sub s WHERE s.dest_id = d.id) "
         "ORDER BY 1, 4"},
    /* The same rows without counting: two small tables only. */
    [ST_DEST_NAMES] =
        {"destination names",
         "SELECT d.id, d.kind, d.name, coalesce(s.id, 0), s.name, 0, 0"
         " FROM mqs_dest d LEFT JOIN mqs_sub s"
         " ON s.dest_id = d.id AND d.kind = 1 ORDER BY 1, 4"},
    /* The rowid B-tree read backwards: LIMIT rows, whatever the backlog. */
    [ST_MSG_RECENT] = {"newest messages",
                       "SELECT id, headers FROM mqs_msg "
                       "ORDER BY id DESC LIMIT ?1"},
    [ST_LOCK_INIT] = {"lock row insert",
                      "INSERT INTO mqs_lock (cluster) VALUES (?1) "
                      "ON CONFLICT (cluster) DO NOTHING"},
    [ST_LOCK_GET] = {"lock row read",
                     "SELECT holder, token, lease_until_ms, acquired_ms, "
                     "boot_id, session_id, session_epoch, session_pidns "
                     "FROM mqs_lock WHERE cluster = ?1"},
    [ST_LOCK_TAKE] = {"lock acquire",
                      "UPDATE mqs_lock SET holder = ?2, token = token + 1, "
                      "lease_until_ms = ?3, acquired_ms = ?4, boot_id = ?5, "
                      "session_id = ?6, session_epoch = ?7, "
                      "session_pidns = ?8 WHERE cluster = ?1"},
    /* The only write to the row while a master holds it: every renew_ms,
     * in its own transaction on the lease connection (never inside a write
     * transaction). RETURNING saves a second statement for held_ms. */
    [ST_LOCK_RENEW] = {"lock renewal",
                       "UPDATE mqs_lock SET lease_until_ms = ?4, "
                       "boot_id = ?5, session_id = ?6, session_epoch = ?7, "
                       "session_pidns = ?8 "
                       "WHERE cluster = ?1 AND holder = ?2 AND token = ?3 "
                       "RETURNING acquired_ms"},
    /* The token stays: the next holder's must be larger. */
    [ST_LOCK_RELEASE] = {"lock release",
                         "UPDATE mqs_lock SET holder = NULL, "
                         "lease_until_ms = NULL, acquired_ms = NULL, "
                         "session_id = NULL, session_epoch = NULL, "
                         "session_pidns = NULL "
                         "WHERE cluster = ?1 AND holder = ?2 AND token = ?3"},
    [ST_LOCK_FORCE] = {"forced lock release",
                       "UPDATE mqs_lock SET holder = NULL, "
                       "lease_until_ms = NULL, acquired_ms = NULL, "
                       "session_id = NULL, session_epoch = NULL, "
                       "session_pidns = NULL WHERE cluster = ?1"},
};
