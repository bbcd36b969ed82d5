/*
 * common.h - what the public API (mqstore.h) and the backend ABI
 * (backend.h) share: error codes, destination kinds, priorities, the
 * export macro and the version. Included by both; a backend module sees
 * this and backend.h only.
 */
#ifndef MQSTORE_COMMON_H
#define MQSTORE_COMMON_H

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define MQS_API __attribute__((visibility("default")))
#else
#define MQS_API
#endif

/* MQS_VERSION_MAJOR, _MINOR, _PATCH and MQS_VERSION_STRING, generated from
 * project(mqstore VERSION ...) in CMakeLists.txt (cmake/version.h.in). */
#include <mqstore/version.h>

/* ---------------------------------------------------------------------------
 * Errors. One table gives every code its name and message. Codes are never
 * renumbered; new ones are appended.
 * ------------------------------------------------------------------------- */
#define MQS_ERRNO_MAP(X)                                                       \
    X(EINVAL, -1, "invalid argument")                                          \
    X(ENOMEM, -2, "out of memory")                                             \
    X(EIO, -3, "database or I/O error")                                        \
    X(ENOTFOUND, -4, "not found")                                              \
    X(ESCHEMA, -5, "schema version not supported by this library")             \
    X(ETOOBIG, -6, "message larger than the configured maximum")               \
    X(EFENCED, -7, "fenced: this node no longer holds the store lock")         \
    X(EBUSY, -8, "held by another node or busy")                               \
    X(ETIMEDOUT, -9, "timed out")                                              \
    X(ENOMODULE, -10, "backend module missing or incompatible")                \
    X(EAUTH, -11, "authentication or permission failure")                      \
    X(ECONN, -12, "database connection lost or unreachable")                   \
    X(ECLOSED, -13, "store is closing")                                        \
    X(ECORRUPT, -14, "not an mqstore database, or corrupt")                    \
    X(ESTATE, -15, "object in the wrong state for this call")                  \
    X(EEXIST, -16, "already exists")                                           \
    X(EUNKNOWN, -17, "commit outcome unknown (connection lost during commit)") \
    X(ENOTSUP, -18, "not supported by this backend")

enum {
#define MQS_ERRNO_ENUM_(name, val, msg) MQS_##name = (val),
    MQS_ERRNO_MAP(MQS_ERRNO_ENUM_)
#undef MQS_ERRNO_ENUM_
};

typedef enum mqs_kind {
    MQS_QUEUE = 0, /* point-to-point: one ack removes the message */
    MQS_TOPIC = 1  /* publish/subscribe: each durable subscription acks */
} mqs_kind;

#define MQS_PRIORITY_MIN 0
#define MQS_PRIORITY_MAX 9
#define MQS_PRIORITY_DEFAULT 4

#ifdef __cplusplus
}
#endif
#endif /* MQSTORE_COMMON_H */
