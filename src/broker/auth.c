/* auth.c - who may connect (a users file of crypt(3) hashes, checked with
 * libxcrypt) and what they may do (access rules on destination patterns
 * with ActiveMQ's wildcards).
 *
 * Why libxcrypt: it is in every Debian system already (libc's crypt
 * moved there), gives yescrypt (Debian's default password hash, salted
 * and deliberately slow) and still verifies bcrypt and sha512-crypt
 * hashes that operators may bring from elsewhere.
 *
 * A slow hash is slow on purpose (milliseconds), so it is never computed
 * on the loop thread: one verifier thread takes jobs from a bounded queue
 * and hands the outcome back as an OP_AUTH op. A flood of CONNECTs costs
 * that thread, not the other clients. */
#include "broker.h"

#include <crypt.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define AUTH_MAX_QUEUE 64 /* CONNECTs waiting for the verifier */

typedef struct auth_user {
    char *name, *hash;
} auth_user;

typedef struct rule {
    char *who;       /* a user name, "*" (any logged-in user), "anonymous" */
    unsigned rights; /* AUTH_READ | AUTH_WRITE | AUTH_ADMIN */
    char *kind;      /* "/queue/", "/topic/" or NULL for both */
    char *pattern;   /* the name part, with '*' and '>' */
} rule;

typedef struct job {
    struct job *next;
    char *login, *passcode;
    op *o;
} job;

static struct {
    bool on; /* a users file was given */
    auth_user *users;
    size_t nusers;
    rule *rules;
    size_t nrules; /* with no rules file: every user may do everything */
    bool have_acl;
    pthread_t th;
    bool started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    job *head, **tail;
    size_t queued;
    bool stop;
} AU = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

/* Spent on unknown users too, so the answer takes as long whether or not
 * the name exists. Generated at load with the default cost. */
static char dummy_hash[CRYPT_OUTPUT_SIZE];

bool auth_enabled(void) { return AU.on; }

/* A file holding secrets: refuse it when others may read it. */
static FILE *open_private(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && (st.st_mode & 0077)) {
        snprintf(err, errlen, "%s is readable or writable by other users "
                 "(mode %03o): run 'chmod 600 %s'", path,
                 (unsigned)(st.st_mode & 0777), path);
        fclose(f);
        return NULL;
    }
    return f;
}

/* Next line without its newline and surrounding blanks; NULL at EOF.
 * Blank lines and '#' comments are skipped. */
static char *next_line(FILE *f, char **line, size_t *cap, int *lineno)
{
    ssize_t n;
    while ((n = getline(line, cap, f)) >= 0) {
        (*lineno)++;
        char *s = *line;
        while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == '\r' ||
                         s[n - 1] == ' ' || s[n - 1] == '\t'))
            s[--n] = '\0';
        while (*s == ' ' || *s == '\t')
            s++;
        if (*s && *s != '#')
            return s;
    }
    return NULL;
}

static int load_users(const char *path, char *err, size_t errlen)
{
    FILE *f = open_private(path, err, errlen);
    if (!f)
        return -1;
    char *line = NULL;
    size_t cap = 0;
    int lineno = 0, rc = 0;
    char *s;
    while ((s = next_line(f, &line, &cap, &lineno))) {
        char *colon = strchr(s, ':');
        if (!colon || colon == s || !colon[1]) {
            snprintf(err, errlen, "%s:%d: expected 'name:hash' (make the "
                     "hash with 'mqbroker --hash-password')", path, lineno);
            rc = -1;
            break;
        }
        *colon = '\0';
        const char *hash = colon + 1;
        if (crypt_checksalt(hash) != CRYPT_SALT_OK) {
            snprintf(err, errlen, "%s:%d: the hash of user '%.64s' is not a "
                     "crypt(3) hash this system supports (yescrypt $y$, "
                     "bcrypt $2b$, sha512-crypt $6$)", path, lineno, s);
            rc = -1;
            break;
        }
        for (size_t i = 0; i < AU.nusers; i++)
            if (!strcmp(AU.users[i].name, s)) {
                snprintf(err, errlen, "%s:%d: user '%.64s' appears twice",
                         path, lineno, s);
                rc = -1;
            }
        if (rc)
            break;
        AU.users = xrealloc(AU.users, (AU.nusers + 1) * sizeof *AU.users);
        AU.users[AU.nusers].name = xstrdup(s);
        AU.users[AU.nusers].hash = xstrdup(hash);
        AU.nusers++;
    }
    if (line)
        explicit_bzero(line, cap);
    free(line);
    fclose(f);
    if (!rc && AU.nusers == 0) {
        snprintf(err, errlen, "%s lists no users", path);
        rc = -1;
    }
    return rc;
}

static int parse_rights(const char *s, unsigned *out)
{
    *out = 0;
    char tmp[64];
    snprintf(tmp, sizeof tmp, "%s", s);
    for (char *save = NULL, *t = strtok_r(tmp, ",", &save); t;
         t = strtok_r(NULL, ",", &save)) {
        if (!strcmp(t, "read"))
            *out |= AUTH_READ;
        else if (!strcmp(t, "write"))
            *out |= AUTH_WRITE;
        else if (!strcmp(t, "admin"))
            *out |= AUTH_ADMIN;
        else if (!strcmp(t, "all"))
            *out |= AUTH_READ | AUTH_WRITE | AUTH_ADMIN;
        else
            return -1;
    }
    return *out ? 0 : -1;
}

static int load_acl(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    AU.have_acl = true;
    char *line = NULL;
    size_t cap = 0;
    int lineno = 0, rc = 0;
    char *s;
    while ((s = next_line(f, &line, &cap, &lineno))) {
        char who[128], rights[64], pat[300], extra[2];
        unsigned r;
        int n = sscanf(s, "%127s %63s %299s %1s", who, rights, pat, extra);
        if (n != 3 || parse_rights(rights, &r)) {
            snprintf(err, errlen, "%s:%d: expected 'USER RIGHTS PATTERN', "
                     "e.g. 'alice read,write /queue/orders.>' (USER: a "
                     "name, * or anonymous; RIGHTS: read, write, admin, all)",
                     path, lineno);
            rc = -1;
            break;
        }
        rule ru = {.who = xstrdup(who), .rights = r};
        if (!strcmp(pat, ">")) {
            ru.pattern = xstrdup(">");
        } else if (!strncmp(pat, "/queue/", 7) || !strncmp(pat, "/topic/", 7)) {
            ru.kind = xstrndup(pat, 7);
            ru.pattern = xstrdup(pat + 7);
        } else {
            snprintf(err, errlen, "%s:%d: pattern '%.128s' must start with "
                     "/queue/ or /topic/ (or be '>' for every destination)",
                     path, lineno, pat);
            free(ru.who);
            rc = -1;
            break;
        }
        AU.rules = xrealloc(AU.rules, (AU.nrules + 1) * sizeof *AU.rules);
        AU.rules[AU.nrules++] = ru;
    }
    free(line);
    fclose(f);
    return rc;
}

/* ActiveMQ wildcards over '.'-separated elements: '*' is one element,
 * '>' (last) is the rest, at least one element. */
static bool wild_match(const char *pat, const char *name)
{
    for (;;) {
        const char *pe = strchr(pat, '.'), *ne = strchr(name, '.');
        size_t pl = pe ? (size_t)(pe - pat) : strlen(pat);
        size_t nl = ne ? (size_t)(ne - name) : strlen(name);
        if (pl == 1 && pat[0] == '>' && !pe)
            return true;
        if (!(pl == 1 && pat[0] == '*') &&
            (pl != nl || memcmp(pat, name, pl)))
            return false;
        if (!pe || !ne)
            return !pe && !ne;
        pat = pe + 1;
        name = ne + 1;
    }
}

bool auth_allowed(const char *login, unsigned right, const char *dn)
{
    if (!AU.on || !AU.have_acl)
        return true;
    const char *who = login ? login : "anonymous";
    for (size_t i = 0; i < AU.nrules; i++) {
        const rule *r = &AU.rules[i];
        if (!(r->rights & right))
            continue;
        if (strcmp(r->who, who) && !(login && !strcmp(r->who, "*")))
            continue;
        if (!r->kind && !strcmp(r->pattern, ">"))
            return true;
        if (r->kind && !strncmp(dn, r->kind, 7) &&
            wild_match(r->pattern, dn + 7))
            return true;
    }
    return false;
}

const char *auth_right_name(unsigned right)
{
    return right == AUTH_READ ? "read" : right == AUTH_WRITE ? "write"
                                                            : "admin";
}

static const char *find_hash(const char *login)
{
    for (size_t i = 0; i < AU.nusers; i++)
        if (!strcmp(AU.users[i].name, login))
            return AU.users[i].hash;
    return NULL;
}

static bool verify(const char *login, const char *pass)
{
    const char *hash = find_hash(login);
    struct crypt_data *cd = xcalloc(1, sizeof *cd);
    const char *out = crypt_r(pass, hash ? hash : dummy_hash, cd);
    bool ok = hash && out && out[0] != '*' && strlen(out) == strlen(hash) &&
              !memcmp(out, hash, strlen(hash));
    explicit_bzero(cd, sizeof *cd);
    free(cd);
    return ok;
}

static void job_free(job *j)
{
    free(j->login);
    if (j->passcode) {
        explicit_bzero(j->passcode, strlen(j->passcode));
        free(j->passcode);
    }
    free(j);
}

static void *verifier(void *arg)
{
    pthread_mutex_lock(&AU.mu);
    for (;;) {
        while (!AU.head && !AU.stop)
            pthread_cond_wait(&AU.cv, &AU.mu);
        if (!AU.head)
            break;
        job *j = AU.head;
        AU.head = j->next;
        if (!AU.head)
            AU.tail = &AU.head;
        AU.queued--;
        pthread_mutex_unlock(&AU.mu);
        bool ok = verify(j->login, j->passcode);
        op *o = j->o;
        o->rc = ok ? 0 : MQS_EAUTH;
        job_free(j);
        broker_post(o);
        pthread_mutex_lock(&AU.mu);
    }
    pthread_mutex_unlock(&AU.mu);
    return arg;
}

int auth_submit(const char *login, const char *passcode, op *o)
{
    pthread_mutex_lock(&AU.mu);
    if (AU.queued >= AUTH_MAX_QUEUE || AU.stop) {
        pthread_mutex_unlock(&AU.mu);
        return -1;
    }
    job *j = xcalloc(1, sizeof *j);
    j->login = xstrdup(login);
    j->passcode = xstrdup(passcode);
    j->o = o;
    *AU.tail = j;
    AU.tail = &j->next;
    AU.queued++;
    pthread_cond_signal(&AU.cv);
    pthread_mutex_unlock(&AU.mu);
    return 0;
}

int auth_init(const config *cfg, char *err, size_t errlen)
{
    AU.tail = &AU.head;
    if (!cfg->users)
        return 0; /* config.c refused the unsafe combinations */
    if (load_users(cfg->users, err, errlen) ||
        (cfg->acl && load_acl(cfg->acl, err, errlen))) {
        auth_free();
        return -1;
    }
    char salt[CRYPT_GENSALT_OUTPUT_SIZE];
    struct crypt_data *cd = xcalloc(1, sizeof *cd);
    const char *h = NULL;
    if (crypt_gensalt_rn("$y$", 0, NULL, 0, salt, sizeof salt))
        h = crypt_r("not a password", salt, cd);
    if (!h || h[0] == '*') {
        free(cd);
        snprintf(err, errlen, "libxcrypt cannot make a yescrypt hash");
        auth_free();
        return -1;
    }
    snprintf(dummy_hash, sizeof dummy_hash, "%s", h);
    free(cd);
    AU.on = true;
    if (pthread_create(&AU.th, NULL, verifier, NULL)) {
        snprintf(err, errlen, "cannot start the password thread");
        auth_free();
        return -1;
    }
    AU.started = true;
    log_msg(LOG_INFO, "authentication: %zu users from %s; %s", AU.nusers,
            cfg->users,
            AU.have_acl ? "access rules from --acl" : "no --acl: every "
                          "user may read and write everything");
    return 0;
}

void auth_free(void)
{
    if (AU.started) {
        pthread_mutex_lock(&AU.mu);
        AU.stop = true;
        pthread_cond_signal(&AU.cv);
        pthread_mutex_unlock(&AU.mu);
        pthread_join(AU.th, NULL);
        AU.started = false;
    }
    /* Jobs never verified: answer them (refused) so their connections,
     * which count the op as in flight, can be freed by the loop. */
    while (AU.head) {
        job *j = AU.head;
        AU.head = j->next;
        j->o->rc = MQS_ECLOSED;
        broker_post(j->o);
        job_free(j);
    }
    for (size_t i = 0; i < AU.nusers; i++) {
        free(AU.users[i].name);
        explicit_bzero(AU.users[i].hash, strlen(AU.users[i].hash));
        free(AU.users[i].hash);
    }
    free(AU.users);
    for (size_t i = 0; i < AU.nrules; i++) {
        free(AU.rules[i].who);
        free(AU.rules[i].kind);
        free(AU.rules[i].pattern);
    }
    free(AU.rules);
    AU.users = NULL;
    AU.rules = NULL;
    AU.nusers = AU.nrules = 0;
    AU.on = AU.have_acl = false;
    AU.tail = &AU.head;
    AU.queued = 0;
}

int auth_hash_password(void)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t n = getline(&line, &cap, stdin);
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        line[--n] = '\0';
    if (n <= 0) {
        fprintf(stderr, "mqbroker: --hash-password reads the password from "
                        "one line of standard input; got none\n");
        free(line);
        return 2;
    }
    char salt[CRYPT_GENSALT_OUTPUT_SIZE];
    struct crypt_data *cd = xcalloc(1, sizeof *cd);
    const char *h = crypt_gensalt_rn("$y$", 0, NULL, 0, salt, sizeof salt)
                        ? crypt_r(line, salt, cd)
                        : NULL;
    int rc = 0;
    if (!h || h[0] == '*') {
        fprintf(stderr, "mqbroker: hashing failed: %s\n", strerror(errno));
        rc = 1;
    } else {
        printf("%s\n", h);
    }
    explicit_bzero(line, cap);
    explicit_bzero(cd, sizeof *cd);
    free(cd);
    free(line);
    return rc;
}
