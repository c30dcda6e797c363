/* The lease keeper, compiled: the same arguments, state file, decisions and log lines as
 * site_agent/keeper.py (read its docstring first; this file follows it function by function).
 * It exists for its footprint only: ~1 MB resident where the Python keeper needs ~12 MB for an
 * interpreter that mostly sleeps, on every node, for months. site_agent.keeperbin builds it and
 * site_agent.fencing runs it when it is built and current, the Python keeper otherwise.
 *
 *   keeper --data-dir DATA_DIR --state-file STATE [--parent-pid PID] [--poll 0.1]
 *          [--idle-poll 0.5] [--pid-file FILE] [--no-setsid]
 *
 * Built with `cc -O2 -o keeper keeper.c` (C99 + POSIX/Linux; no library beyond libc). */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_STATE 4096     /* a state file is ~100 bytes: anything larger is not ours */
#define MAX_TARGETS 4096   /* postmaster + backends: max_connections is far below */

static volatile sig_atomic_t stop_flag = 0;

static void on_signal(int sig) {
    (void)sig;
    stop_flag = 1;
}

static void klog(const char *fmt, ...) {
    char stamp[32];
    time_t t = time(NULL);
    struct tm tm;
    localtime_r(&t, &tm);
    strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
    fprintf(stderr, "%s lease-keeper[%d]: ", stamp, (int)getpid());
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
}

static double monotonic_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The whole file into buf (NUL-terminated); its length, or -1 when unreadable or too large. */
static long read_file(const char *path, char *buf, size_t size) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    size_t len = 0;
    for (;;) {
        if (len == size - 1) {
            char extra;
            ssize_t more = read(fd, &extra, 1);
            close(fd);
            return more == 0 ? (long)len : -1;
        }
        ssize_t n = read(fd, buf + len, size - 1 - len);
        if (n < 0) {
            if (errno == EINTR) continue;
            close(fd);
            return -1;
        }
        if (n == 0) break;
        len += (size_t)n;
    }
    close(fd);
    buf[len] = '\0';
    return (long)len;
}

/* ---- the state file (KeeperState / read_state) ------------------------------------------- */

struct kstate {
    long long seq;
    bool armed;
    bool has_deadline;
    double deadline;
    char boot_id[64];
};

struct jp {
    const char *s;
};

static void ws(struct jp *p) {
    while (*p->s == ' ' || *p->s == '\t' || *p->s == '\n' || *p->s == '\r') p->s++;
}

/* A JSON string into out (truncated to size; \u escapes become '?'); false on a syntax error. */
static bool jstring(struct jp *p, char *out, size_t size) {
    size_t n = 0;
    if (*p->s != '"') return false;
    p->s++;
    while (*p->s && *p->s != '"') {
        char c = *p->s++;
        if ((unsigned char)c < 0x20) return false;
        if (c == '\\') {
            char e = *p->s++;
            switch (e) {
            case '"': case '\\': case '/': c = e; break;
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            case 'n': c = '\n'; break;
            case 'r': c = '\r'; break;
            case 't': c = '\t'; break;
            case 'u':
                for (int i = 0; i < 4; i++)
                    if (!strchr("0123456789abcdefABCDEF", *p->s++) || p->s[-1] == '\0') return false;
                c = '?';
                break;
            default: return false;
            }
        }
        if (out != NULL && n + 1 < size) out[n++] = c;
    }
    if (*p->s != '"') return false;
    p->s++;
    if (out != NULL) out[n] = '\0';
    return true;
}

enum jkind { J_BAD, J_INT, J_FLOAT, J_TRUE, J_FALSE, J_NULL, J_STRING, J_OTHER };

struct jval {
    enum jkind kind;
    long long i;
    double f;
    char str[64];
};

static bool jskip(struct jp *p, int depth);

static bool jvalue(struct jp *p, struct jval *v, int depth) {
    ws(p);
    const char *s = p->s;
    v->kind = J_BAD;
    if (*s == '"') {
        v->kind = J_STRING;
        return jstring(p, v->str, sizeof v->str);
    }
    if (*s == '{' || *s == '[') {
        v->kind = J_OTHER;
        return jskip(p, depth + 1);
    }
    static const struct {
        const char *word;
        enum jkind kind;
        double f;
    } words[] = {{"true", J_TRUE, 0}, {"false", J_FALSE, 0}, {"null", J_NULL, 0},
                 {"NaN", J_FLOAT, NAN}, {"Infinity", J_FLOAT, INFINITY}, {"-Infinity", J_FLOAT, -INFINITY}};
    for (size_t k = 0; k < sizeof words / sizeof words[0]; k++) {
        size_t len = strlen(words[k].word);
        if (strncmp(s, words[k].word, len) == 0) {
            v->kind = words[k].kind;
            v->f = words[k].f;
            p->s += len;
            return true;
        }
    }
    const char *e = s;
    bool is_float = false;
    if (*e == '-') e++;
    if (*e < '0' || *e > '9') return false;
    while ((*e >= '0' && *e <= '9') || *e == '.' || *e == 'e' || *e == 'E' || *e == '+' || *e == '-') {
        if (*e == '.' || *e == 'e' || *e == 'E') is_float = true;
        e++;
    }
    char num[64];
    if ((size_t)(e - s) >= sizeof num) return false;
    memcpy(num, s, (size_t)(e - s));
    num[e - s] = '\0';
    char *end;
    errno = 0;
    if (is_float) {
        v->f = strtod(num, &end);
        v->kind = J_FLOAT;
    } else {
        v->i = strtoll(num, &end, 10);
        v->kind = J_INT;
    }
    if (*end != '\0' || errno == ERANGE) return false;
    p->s = e;
    return true;
}

/* Skips an object or array (values of keys the keeper does not read). */
static bool jskip(struct jp *p, int depth) {
    if (depth > 32) return false;
    char close = *p->s == '{' ? '}' : ']';
    bool object = close == '}';
    p->s++;
    ws(p);
    if (*p->s == close) {
        p->s++;
        return true;
    }
    for (;;) {
        ws(p);
        if (object) {
            if (!jstring(p, NULL, 0)) return false;
            ws(p);
            if (*p->s++ != ':') return false;
        }
        struct jval v;
        if (!jvalue(p, &v, depth)) return false;
        ws(p);
        if (*p->s == ',') {
            p->s++;
            continue;
        }
        if (*p->s == close) {
            p->s++;
            return true;
        }
        return false;
    }
}

/* read_state: false when absent or unreadable (the keeper then keeps what it had). */
static bool read_state(const char *path, struct kstate *out) {
    char buf[MAX_STATE];
    if (read_file(path, buf, sizeof buf) < 0) return false;
    struct jp p = {buf};
    bool have_seq = false, have_armed = false;
    struct kstate st = {0};
    struct jval seq = {0}, armed = {0}, deadline = {.kind = J_NULL}, boot = {.kind = J_STRING};
    ws(&p);
    if (*p.s != '{') return false;
    p.s++;
    ws(&p);
    if (*p.s == '}') return false; /* no seq, no armed */
    for (;;) {
        char key[32];
        ws(&p);
        if (!jstring(&p, key, sizeof key)) return false;
        ws(&p);
        if (*p.s++ != ':') return false;
        struct jval v;
        if (!jvalue(&p, &v, 0)) return false;
        /* the last occurrence of a key wins, as with Python's json */
        if (strcmp(key, "seq") == 0) { seq = v; have_seq = true; }
        else if (strcmp(key, "armed") == 0) { armed = v; have_armed = true; }
        else if (strcmp(key, "deadline") == 0) deadline = v;
        else if (strcmp(key, "boot_id") == 0) boot = v;
        ws(&p);
        if (*p.s == ',') { p.s++; continue; }
        if (*p.s == '}') { p.s++; break; }
        return false;
    }
    ws(&p);
    if (*p.s != '\0') return false;
    if (!have_seq || !have_armed || seq.kind != J_INT) return false;
    if (armed.kind != J_TRUE && armed.kind != J_FALSE) return false;
    if (deadline.kind != J_NULL && deadline.kind != J_INT && deadline.kind != J_FLOAT) return false;
    st.seq = seq.i;
    st.armed = armed.kind == J_TRUE;
    st.has_deadline = deadline.kind != J_NULL;
    st.deadline = deadline.kind == J_INT ? (double)deadline.i : deadline.f;
    if (boot.kind == J_STRING)
        snprintf(st.boot_id, sizeof st.boot_id, "%s", boot.str);
    else /* Python's str() of a non-string never equals a boot id: counts as another boot */
        snprintf(st.boot_id, sizeof st.boot_id, "%s", "(not a string)");
    *out = st;
    return true;
}

/* ---- /proc (drctl.procutil) -------------------------------------------------------------- */

/* Fields of /proc/PID/stat after comm: fields[0] is the state. Returns how many, 0 if none. */
static int stat_fields(int pid, char *buf, size_t size, char **fields, int max) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    if (read_file(path, buf, size) < 0) return 0;
    char *paren = strrchr(buf, ')');
    if (paren == NULL || paren[1] == '\0') return 0;
    int n = 0;
    char *save = NULL;
    for (char *tok = strtok_r(paren + 2, " \n", &save); tok && n < max; tok = strtok_r(NULL, " \n", &save))
        fields[n++] = tok;
    return n;
}

/* Start time in clock ticks since boot (field 22), or -1. */
static long long proc_start_time(int pid) {
    char buf[2048];
    char *f[24];
    int n = stat_fields(pid, buf, sizeof buf, f, 24);
    return n > 19 ? atoll(f[19]) : -1;
}

static int proc_ppid(int pid) {
    char buf[2048];
    char *f[4];
    return stat_fields(pid, buf, sizeof buf, f, 4) > 1 ? atoi(f[1]) : -1;
}

/* pid_alive: runs (not a zombie) and, when start >= 0, started at start. */
static bool pid_alive(int pid, long long start) {
    char buf[2048];
    char *f[24];
    int n = stat_fields(pid, buf, sizeof buf, f, 24);
    if (n == 0 || f[0][0] == 'Z' || f[0][0] == 'X') return false;
    return start < 0 || (n > 19 && atoll(f[19]) == start);
}

static bool is_pid_name(const char *s) {
    if (*s == '\0') return false;
    for (; *s; s++)
        if (*s < '0' || *s > '9') return false;
    return true;
}

static int add_unique(int *list, int n, int pid) {
    for (int i = 0; i < n; i++)
        if (list[i] == pid) return n;
    if (n < MAX_TARGETS) list[n++] = pid;
    return n;
}

/* children_of: live direct children, from /proc/PID/task/TID/children, else a scan of /proc. */
static int children_of(int pid, int *out) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "/proc/%d/task", pid);
    DIR *d = opendir(path);
    if (d == NULL) return 0;
    static int found[MAX_TARGETS];
    static char buf[65536];
    int n = 0;
    bool readable = false;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!is_pid_name(e->d_name)) continue;
        snprintf(path, sizeof path, "/proc/%d/task/%s/children", pid, e->d_name);
        if (read_file(path, buf, sizeof buf) < 0) continue;
        readable = true;
        char *save = NULL;
        for (char *tok = strtok_r(buf, " \n", &save); tok; tok = strtok_r(NULL, " \n", &save))
            n = add_unique(found, n, atoi(tok));
    }
    closedir(d);
    if (!readable) { /* kernel without CONFIG_PROC_CHILDREN */
        d = opendir("/proc");
        if (d != NULL) {
            while ((e = readdir(d)) != NULL)
                if (is_pid_name(e->d_name) && proc_ppid(atoi(e->d_name)) == pid) n = add_unique(found, n, atoi(e->d_name));
            closedir(d);
        }
    }
    int live = 0;
    for (int i = 0; i < n; i++)
        if (pid_alive(found[i], -1)) out[live++] = found[i];
    return live;
}

/* ---- fencing (read_postmaster, _is_postmaster_of, kill_primary) --------------------------- */

static bool read_postmaster(const char *data_dir, int *pid, char *status, size_t size) {
    char path[PATH_MAX + 32];
    char buf[8192];
    snprintf(path, sizeof path, "%s/postmaster.pid", data_dir);
    if (read_file(path, buf, sizeof buf) < 0) return false;
    char *lines[9] = {0};
    int n = 0;
    char *save = NULL;
    char *cur = buf;
    /* split on '\n' keeping empty lines, as str.splitlines() does */
    while (n < 9) {
        lines[n++] = cur;
        char *nl = strchr(cur, '\n');
        if (nl == NULL) break;
        *nl = '\0';
        cur = nl + 1;
        if (*cur == '\0') break;
    }
    (void)save;
    char *first = lines[0];
    while (*first == ' ' || *first == '\t' || *first == '\r') first++;
    char *end;
    errno = 0;
    long v = strtol(first, &end, 10);
    while (*end == ' ' || *end == '\t' || *end == '\r') end++;
    if (end == first || *end != '\0' || errno == ERANGE || v <= 0 || v > INT_MAX) return false;
    *pid = (int)v;
    status[0] = '\0';
    if (n > 7) {
        char *s = lines[7];
        while (*s == ' ' || *s == '\t') s++;
        size_t len = strlen(s);
        while (len > 0 && (s[len - 1] == ' ' || s[len - 1] == '\t' || s[len - 1] == '\r')) len--;
        if (len >= size) len = size - 1;
        memcpy(status, s, len);
        status[len] = '\0';
    }
    return true;
}

/* The postmaster chdir()s to its data directory; a recycled PID will be elsewhere. Unreadable
 * cwd (another user's process): assume yes, as the Python keeper does. */
static bool is_postmaster_of(int pid, const char *data_dir) {
    char path[64], cwd[PATH_MAX], a[PATH_MAX], b[PATH_MAX];
    snprintf(path, sizeof path, "/proc/%d/cwd", pid);
    ssize_t n = readlink(path, cwd, sizeof cwd - 1);
    if (n < 0) return errno == EACCES || errno == EPERM;
    cwd[n] = '\0';
    const char *ra = realpath(cwd, a) ? a : cwd;
    const char *rb = realpath(data_dir, b) ? b : data_dir;
    return strcmp(ra, rb) == 0;
}

/* SIGKILL the postmaster of data_dir and its children; how many were signalled (in out). */
static int kill_primary(const char *data_dir, int *out) {
    int pid;
    char status[64];
    if (!read_postmaster(data_dir, &pid, status, sizeof status)) return 0;
    if (!pid_alive(pid, -1) || !is_postmaster_of(pid, data_dir)) return 0;
    if (strcmp(status, "standby") == 0) return 0;
    kill(pid, SIGSTOP); /* no new children between listing and killing them */
    int n = children_of(pid, out);
    out[n++] = pid;
    for (int i = 0; i < n; i++) kill(out[i], SIGKILL);
    return n;
}

/* ---- the keeper (class Keeper) ------------------------------------------------------------ */

struct keeper {
    const char *data_dir;
    const char *state_file;
    int parent_pid;
    long long parent_start;
    double poll, idle_poll;
    char boot[64];
    struct kstate state;
    bool fired;
    bool fired_has_deadline;
    double fired_for;
};

static void boot_id(char *out, size_t size) {
    char buf[128];
    out[0] = '\0';
    if (read_file("/proc/sys/kernel/random/boot_id", buf, sizeof buf) < 0) return;
    size_t len = strlen(buf);
    while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == ' ')) buf[--len] = '\0';
    snprintf(out, size, "%s", buf);
}

static void refresh(struct keeper *k) {
    struct kstate st;
    if (!read_state(k->state_file, &st) || st.seq <= k->state.seq) return;
    if (st.boot_id[0] && k->boot[0] && strcmp(st.boot_id, k->boot) != 0) {
        st.armed = false; /* from before a reboot */
        st.has_deadline = false;
    }
    if (st.armed != k->state.armed) klog(st.armed ? "armed" : "disarmed");
    k->state = st;
}

static bool should_fire(double now, const struct kstate *st) {
    return st->armed && st->has_deadline && now >= st->deadline;
}

static void step(struct keeper *k, double now) {
    static int killed[MAX_TARGETS + 1];
    refresh(k);
    if (!should_fire(now, &k->state)) return;
    int n = kill_primary(k->data_dir, killed);
    if (n > 0) {
        char list[1024];
        size_t len = 0;
        list[0] = '\0';
        for (int i = 0; i < n && len < sizeof list - 16; i++)
            len += (size_t)snprintf(list + len, sizeof list - len, "%s%d", i ? ", " : "", killed[i]);
        klog("lease deadline passed %.3fs ago without a feed: SIGKILLed PostgreSQL [%s]", now - k->state.deadline, list);
    } else if (!k->fired || k->fired_has_deadline != k->state.has_deadline || k->fired_for != k->state.deadline) {
        klog("lease deadline passed without a feed; no writable PostgreSQL to kill");
    }
    k->fired = true;
    k->fired_has_deadline = k->state.has_deadline;
    k->fired_for = k->state.deadline;
}

static double next_sleep(const struct keeper *k, double now) {
    if (!k->state.armed || !k->state.has_deadline) return k->idle_poll;
    if (now >= k->state.deadline) return k->poll;
    double left = k->state.deadline - now;
    return left < k->idle_poll ? left : k->idle_poll;
}

static void sleep_for(double seconds) {
    if (!(seconds > 0)) return;
    struct timespec ts = {(time_t)seconds, (long)((seconds - (double)(time_t)seconds) * 1e9)};
    clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, NULL); /* a signal cuts it short: the loop checks */
}

static int run(struct keeper *k) {
    klog("watching %s (state %s, parent %d)", k->data_dir, k->state_file, k->parent_pid);
    while (!stop_flag) {
        double now = monotonic_now();
        step(k, now);
        if (!pid_alive(k->parent_pid, k->parent_start)) {
            if (!k->state.armed || !k->state.has_deadline || now >= k->state.deadline) {
                klog("the agent is gone: exiting");
                return 0;
            }
        }
        sleep_for(next_sleep(k, monotonic_now()));
    }
    klog("stopping on signal");
    return 0;
}

/* ---- the pid file (drctl.safefs.write_atomic: random temporary name, O_EXCL|O_NOFOLLOW, rename) */

static bool write_pid_file(const char *path) {
    char head[PATH_MAX], tmp[PATH_MAX + 64], body[32];
    const char *slash = strrchr(path, '/');
    const char *name = slash ? slash + 1 : path;
    if (*name == '\0') return false;
    if (slash == NULL)
        snprintf(head, sizeof head, ".");
    else if (slash == path)
        snprintf(head, sizeof head, "/");
    else
        snprintf(head, sizeof head, "%.*s", (int)(slash - path), path);
    int dfd = open(head, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) return false;
    int fd = -1;
    for (int attempt = 0; attempt < 10 && fd < 0; attempt++) {
        unsigned char rnd[8];
        if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd) break;
        snprintf(tmp, sizeof tmp, ".%s.%02x%02x%02x%02x%02x%02x%02x%02x.tmp", name, rnd[0], rnd[1], rnd[2], rnd[3],
                 rnd[4], rnd[5], rnd[6], rnd[7]);
        fd = openat(dfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd < 0 && errno != EEXIST) break;
    }
    if (fd < 0) {
        close(dfd);
        return false;
    }
    int len = snprintf(body, sizeof body, "%d\n", (int)getpid());
    bool ok = fchmod(fd, 0644) == 0 && write(fd, body, (size_t)len) == len;
    ok = close(fd) == 0 && ok;
    ok = ok && renameat(dfd, tmp, dfd, name) == 0;
    if (!ok) unlinkat(dfd, tmp, 0);
    close(dfd);
    return ok;
}

/* ---- arguments (argparse's --name VALUE and --name=VALUE) --------------------------------- */

static void usage(const char *msg) {
    fprintf(stderr,
            "usage: keeper --data-dir DATA_DIR --state-file STATE_FILE [--parent-pid PID] [--poll S]\n"
            "              [--idle-poll S] [--pid-file FILE] [--no-setsid]\n"
            "keeper: error: %s\n",
            msg);
    exit(2);
}

static double parse_seconds(const char *opt, const char *text) {
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (end == text || *end != '\0' || errno == ERANGE || !isfinite(v)) {
        char msg[256];
        snprintf(msg, sizeof msg, "argument %s: invalid float value: '%s'", opt, text);
        usage(msg);
    }
    return v;
}

int main(int argc, char **argv) {
    const char *data_dir = NULL, *state_file = NULL, *pid_file = NULL;
    int parent = -1;
    double poll = 0.1, idle_poll = 0.5;
    bool no_setsid = false;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "--no-setsid") == 0) {
            no_setsid = true;
            continue;
        }
        static const char *const takes_value[] = {"--data-dir", "--state-file", "--parent-pid", "--poll", "--idle-poll",
                                                  "--pid-file"};
        const char *value = NULL, *opt = NULL;
        for (size_t k = 0; k < sizeof takes_value / sizeof takes_value[0]; k++) {
            size_t len = strlen(takes_value[k]);
            if (strncmp(arg, takes_value[k], len) != 0) continue;
            if (arg[len] == '=') value = arg + len + 1;
            else if (arg[len] == '\0' && i + 1 < argc) value = argv[++i];
            else if (arg[len] != '\0') continue;
            opt = takes_value[k];
            if (value == NULL) {
                char msg[128];
                snprintf(msg, sizeof msg, "argument %s: expected one argument", opt);
                usage(msg);
            }
            break;
        }
        if (opt == NULL) {
            char msg[PATH_MAX];
            snprintf(msg, sizeof msg, "unrecognized arguments: %s", arg);
            usage(msg);
        }
        if (strcmp(opt, "--data-dir") == 0) data_dir = value;
        else if (strcmp(opt, "--state-file") == 0) state_file = value;
        else if (strcmp(opt, "--pid-file") == 0) pid_file = value;
        else if (strcmp(opt, "--poll") == 0) poll = parse_seconds(opt, value);
        else if (strcmp(opt, "--idle-poll") == 0) idle_poll = parse_seconds(opt, value);
        else {
            char *end;
            errno = 0;
            long v = strtol(value, &end, 10);
            if (end == value || *end != '\0' || errno == ERANGE || v <= 0 || v > INT_MAX) {
                char msg[256];
                snprintf(msg, sizeof msg, "argument --parent-pid: invalid int value: '%s'", value);
                usage(msg);
            }
            parent = (int)v;
        }
    }
    if (data_dir == NULL || state_file == NULL) usage("the following arguments are required: --data-dir, --state-file");

    /* Python ignores SIGPIPE; so must we (stderr may be a pipe whose reader went away). */
    signal(SIGPIPE, SIG_IGN);
    if (!no_setsid) setsid();
    if (parent < 0) parent = (int)getppid();
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    struct keeper k;
    memset(&k, 0, sizeof k);
    k.data_dir = data_dir;
    k.state_file = state_file;
    k.parent_pid = parent;
    k.parent_start = proc_start_time(parent);
    k.poll = poll > 0.01 ? poll : 0.01;
    idle_poll = idle_poll > 0.01 ? idle_poll : 0.01;
    k.idle_poll = idle_poll > k.poll ? idle_poll : k.poll;
    boot_id(k.boot, sizeof k.boot);

    if (pid_file != NULL && !write_pid_file(pid_file)) {
        klog("cannot write the pid file %s: %s", pid_file, strerror(errno));
        return 1;
    }
    int code = run(&k);
    if (pid_file != NULL) unlink(pid_file);
    return code;
}
