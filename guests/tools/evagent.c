/*
 * evagent - command agent of the elastic-vhost test guest on a serial port
 * (ttyS1). Replaces the busybox-ash read loop, whose `read` builtin restarts
 * from scratch when SIGCHLD interrupts it and so silently discards the part
 * of a command line it had already consumed.
 *
 * Host -> guest, one frame per line (see qemu-glue/README.md):
 *   X <id> <len> <base64 command> <crc32>     run `/bin/sh -c COMMAND`
 *   K <id> <len> <base64 "TARGET SIG"> <crc32> signal command TARGET's process group
 * <crc32> = 8 lowercase hex digits, CRC-32 (zlib) of everything before the
 * space that precedes it; <len> = byte length of the decoded payload.
 *
 * Guest -> host, every line written with ONE write() by this single process
 * (lines of concurrent commands never interleave):
 *   EV-AGENT ready               once, at start
 *   EV-ACK <id>                  frame accepted (again for a duplicate id: not re-run)
 *   EV-BADLINE <id|-> <reason>   frame rejected (the host re-sends it)
 *   EV-OUT <id> <line>           output line of a command (stdout+stderr merged)
 *   EV-DONE <id> rc=<n>          command finished (exit code, 128+signal)
 * Commands run concurrently, each in its own session (setsid), stdin
 * /dev/null, cwd /tmp, default signal dispositions; pid in /run/ev/<id>.pid.
 * EV-DONE comes once the shell exited AND its output pipe is closed.
 *
 * usage: evagent TTY [READYFILE]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#define MAX_LINE (4u << 20)      /* longest accepted frame */
#define MAX_OUT_LINE (64u << 10) /* longer output is split into several EV-OUT lines */
#define MAX_ID 64

static const char *tty_path;
static int tty = -1;
static int sigpipe_fd[2] = {-1, -1};

/* ------------------------------------------------------------ output */

static void die(const char *what) {
  fprintf(stderr, "EV-ERROR evagent: %s: %s\n", what, strerror(errno));
  exit(1);
}

static void write_all(const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(tty, p, n);
    if (w < 0) {
      if (errno == EINTR || errno == EAGAIN) {
        if (errno == EAGAIN) poll(&(struct pollfd){.fd = tty, .events = POLLOUT}, 1, 100);
        continue;
      }
      return; /* tty gone: nothing sensible to do */
    }
    p += w;
    n -= (size_t)w;
  }
}

/* One line, one write(). */
static void emitf(const char *fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if ((size_t)n > sizeof buf - 2) n = sizeof buf - 2;
  buf[n++] = '\n';
  write_all(buf, (size_t)n);
}

static void emit_out(const char *id, const char *line, size_t n) {
  size_t idn = strlen(id);
  size_t total = 7 + idn + 1 + n + 1;
  char *b = malloc(total);
  if (!b) return;
  memcpy(b, "EV-OUT ", 7);
  memcpy(b + 7, id, idn);
  b[7 + idn] = ' ';
  memcpy(b + 8 + idn, line, n);
  b[total - 1] = '\n';
  /* a stray newline inside would split the frame: there is none (split on '\n') */
  write_all(b, total);
  free(b);
}

/* ------------------------------------------------------------ crc32 / base64 */

static uint32_t crc_table[256];
static void crc_init(void) {
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    crc_table[i] = c;
  }
}
static uint32_t crc32_buf(const unsigned char *p, size_t n) {
  uint32_t c = 0xFFFFFFFFu;
  while (n--) c = crc_table[(c ^ *p++) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

static int b64v(unsigned char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}
/* Strict decode (padding required); returns length or -1. out has room for n*3/4+1. */
static long b64_decode(const char *s, size_t n, unsigned char *out) {
  if (n % 4) return -1;
  long o = 0;
  for (size_t i = 0; i < n; i += 4) {
    int v[4];
    int pad = 0;
    for (int k = 0; k < 4; k++) {
      unsigned char c = (unsigned char)s[i + k];
      if (c == '=' && i + 4 == n && k >= 2) {
        v[k] = 0;
        pad++;
      } else {
        if (pad) return -1;
        v[k] = b64v(c);
        if (v[k] < 0) return -1;
      }
    }
    uint32_t x = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
    out[o++] = (unsigned char)(x >> 16);
    if (pad < 2) out[o++] = (unsigned char)(x >> 8);
    if (pad < 1) out[o++] = (unsigned char)x;
  }
  return o;
}

static int valid_id(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n > MAX_ID) return 0;
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.' ||
          c == ':' || c == '-'))
      return 0;
  }
  return 1;
}

/* ------------------------------------------------------------ id set (every id ever accepted) */

static char **seen;
static size_t seen_cap, seen_n;
static uint64_t hash_str(const char *s) {
  uint64_t h = 1469598103934665603ull;
  while (*s) h = (h ^ (unsigned char)*s++) * 1099511628211ull;
  return h;
}
static int seen_has(const char *id) {
  if (!seen_cap) return 0;
  for (size_t i = hash_str(id) & (seen_cap - 1);; i = (i + 1) & (seen_cap - 1)) {
    if (!seen[i]) return 0;
    if (!strcmp(seen[i], id)) return 1;
  }
}
static void seen_add(const char *id) {
  if ((seen_n + 1) * 2 > seen_cap) {
    size_t ncap = seen_cap ? seen_cap * 2 : 1024;
    char **n = calloc(ncap, sizeof *n);
    if (!n) die("calloc");
    for (size_t j = 0; j < seen_cap; j++) {
      if (!seen[j]) continue;
      size_t i = hash_str(seen[j]) & (ncap - 1);
      while (n[i]) i = (i + 1) & (ncap - 1);
      n[i] = seen[j];
    }
    free(seen);
    seen = n;
    seen_cap = ncap;
  }
  size_t i = hash_str(id) & (seen_cap - 1);
  while (seen[i]) i = (i + 1) & (seen_cap - 1);
  seen[i] = strdup(id);
  seen_n++;
}

/* ------------------------------------------------------------ commands */

struct cmd {
  char id[MAX_ID + 1];
  pid_t pid;
  int fd; /* read end of the output pipe, -1 after EOF */
  int exited, status;
  char *buf;
  size_t len, cap;
};
static struct cmd **cmds;
static size_t ncmds, cmds_cap;

/* kills that arrived before their target (target never started: it is not run) */
struct early_kill {
  char id[MAX_ID + 1];
  int sig;
};
static struct early_kill *early;
static size_t nearly, early_cap;

static void pidfile_path(char *p, size_t n, const char *id) { snprintf(p, n, "/run/ev/%s.pid", id); }

static void start_cmd(const char *id, const char *command) {
  int p[2];
  if (pipe2(p, O_CLOEXEC) < 0) {
    emitf("EV-OUT %s evagent: pipe: %s", id, strerror(errno));
    emitf("EV-DONE %s rc=255", id);
    return;
  }
  pid_t pid = fork();
  if (pid < 0) {
    emitf("EV-OUT %s evagent: fork: %s", id, strerror(errno));
    emitf("EV-DONE %s rc=255", id);
    close(p[0]);
    close(p[1]);
    return;
  }
  if (pid == 0) {
    setsid();
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_DFL;
    for (int s = 1; s < NSIG; s++) sigaction(s, &sa, NULL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    if (chdir("/tmp") < 0) { /* stay where we are */
    }
    int nul = open("/dev/null", O_RDONLY);
    if (nul >= 0 && nul != 0) {
      dup2(nul, 0);
      close(nul);
    }
    dup2(p[1], 1);
    dup2(p[1], 2);
    execl("/bin/sh", "sh", "-c", command, (char *)NULL);
    _exit(127);
  }
  close(p[1]);
  fcntl(p[0], F_SETFL, fcntl(p[0], F_GETFL) | O_NONBLOCK);
  char pf[128];
  pidfile_path(pf, sizeof pf, id);
  FILE *f = fopen(pf, "w");
  if (f) {
    fprintf(f, "%d\n", (int)pid);
    fclose(f);
  }
  struct cmd *c = calloc(1, sizeof *c);
  if (!c) die("calloc");
  snprintf(c->id, sizeof c->id, "%s", id);
  c->pid = pid;
  c->fd = p[0];
  if (ncmds == cmds_cap) {
    cmds_cap = cmds_cap ? cmds_cap * 2 : 64;
    cmds = realloc(cmds, cmds_cap * sizeof *cmds);
    if (!cmds) die("realloc");
  }
  cmds[ncmds++] = c;
}

static void flush_lines(struct cmd *c, int eof) {
  size_t start = 0;
  for (size_t i = 0; i < c->len; i++) {
    if (c->buf[i] == '\n') {
      size_t n = i - start;
      if (n && c->buf[i - 1] == '\r') n--;
      emit_out(c->id, c->buf + start, n);
      start = i + 1;
    }
  }
  if (start) {
    memmove(c->buf, c->buf + start, c->len - start);
    c->len -= start;
  }
  if (c->len && (eof || c->len >= MAX_OUT_LINE)) {
    emit_out(c->id, c->buf, c->len);
    c->len = 0;
  }
}

static void read_output(struct cmd *c) {
  for (;;) {
    if (c->cap - c->len < 16384) {
      c->cap = c->cap ? c->cap * 2 : 32768;
      c->buf = realloc(c->buf, c->cap);
      if (!c->buf) die("realloc");
    }
    ssize_t r = read(c->fd, c->buf + c->len, c->cap - c->len);
    if (r > 0) {
      c->len += (size_t)r;
      flush_lines(c, 0);
      continue;
    }
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && errno == EAGAIN) return;
    /* EOF (or error): the output is complete */
    flush_lines(c, 1);
    close(c->fd);
    c->fd = -1;
    return;
  }
}

static void finish_done(void) {
  for (size_t i = 0; i < ncmds;) {
    struct cmd *c = cmds[i];
    if (c->fd >= 0 || !c->exited) {
      i++;
      continue;
    }
    int rc = WIFEXITED(c->status) ? WEXITSTATUS(c->status) : WIFSIGNALED(c->status) ? 128 + WTERMSIG(c->status) : 255;
    emitf("EV-DONE %s rc=%d", c->id, rc);
    char pf[128];
    pidfile_path(pf, sizeof pf, c->id);
    unlink(pf);
    free(c->buf);
    free(c);
    cmds[i] = cmds[--ncmds];
  }
}

static void reap(void) {
  int st;
  pid_t pid;
  while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
    for (size_t i = 0; i < ncmds; i++) {
      if (cmds[i]->pid == pid) {
        cmds[i]->exited = 1;
        cmds[i]->status = st;
        break;
      }
    }
    /* other pids: orphans re-parented to us (subreaper), just reaped */
  }
}

static void on_sigchld(int s) {
  (void)s;
  int e = errno;
  if (write(sigpipe_fd[1], "c", 1) < 0) { /* pipe full: a wake-up is pending anyway */
  }
  errno = e;
}

/* ------------------------------------------------------------ frames */

static const struct {
  const char *name;
  int sig;
} signames[] = {{"HUP", SIGHUP}, {"INT", SIGINT}, {"QUIT", SIGQUIT}, {"KILL", SIGKILL}, {"USR1", SIGUSR1},
                {"USR2", SIGUSR2}, {"PIPE", SIGPIPE}, {"ALRM", SIGALRM}, {"TERM", SIGTERM}, {"CONT", SIGCONT},
                {"STOP", SIGSTOP}, {"TSTP", SIGTSTP}};

static int parse_sig(const char *s) {
  if (!strncmp(s, "SIG", 3)) s += 3;
  for (size_t i = 0; i < sizeof signames / sizeof signames[0]; i++)
    if (!strcmp(s, signames[i].name)) return signames[i].sig;
  char *end;
  long v = strtol(s, &end, 10);
  if (*s && !*end && v > 0 && v < NSIG) return (int)v;
  return -1;
}

static void do_kill(const char *kid, const char *target, int sig) {
  for (size_t i = 0; i < ncmds; i++) {
    if (!strcmp(cmds[i]->id, target)) {
      if (kill(-cmds[i]->pid, sig) < 0) kill(cmds[i]->pid, sig);
      return;
    }
  }
  if (seen_has(target)) return; /* already finished */
  if (nearly == early_cap) {
    early_cap = early_cap ? early_cap * 2 : 16;
    early = realloc(early, early_cap * sizeof *early);
    if (!early) die("realloc");
  }
  snprintf(early[nearly].id, sizeof early[nearly].id, "%s", target);
  early[nearly].sig = sig;
  nearly++;
  (void)kid;
}

/* line: NUL-terminated, no '\n' / '\r' */
static void handle_line(char *line, size_t n) {
  /* a guess at the id for error reports: the second token */
  char guess[MAX_ID + 1] = "-";
  {
    char *sp = memchr(line, ' ', n);
    if (sp) {
      char *e = sp + 1;
      while (*e && *e != ' ') e++;
      size_t gl = (size_t)(e - sp - 1);
      if (gl && gl <= MAX_ID) {
        memcpy(guess, sp + 1, gl);
        guess[gl] = 0;
        if (!valid_id(guess)) strcpy(guess, "-");
      }
    }
  }
  char *last = strrchr(line, ' ');
  if (!last || strlen(last + 1) != 8) {
    emitf("EV-BADLINE %s no checksum (%zu bytes)", guess, n);
    return;
  }
  char *end;
  unsigned long want = strtoul(last + 1, &end, 16);
  if (*end) {
    emitf("EV-BADLINE %s bad checksum field (%zu bytes)", guess, n);
    return;
  }
  uint32_t got = crc32_buf((const unsigned char *)line, (size_t)(last - line));
  if (got != (uint32_t)want) {
    emitf("EV-BADLINE %s checksum mismatch (%zu bytes)", guess, n);
    return;
  }
  *last = 0;
  /* kind id len b64 */
  char *tok[4];
  int nt = 0;
  char *save = NULL;
  for (char *t = strtok_r(line, " ", &save); t; t = strtok_r(NULL, " ", &save)) {
    if (nt < 4) tok[nt] = t;
    nt++;
  }
  if (nt != 4 || strlen(tok[0]) != 1 || !valid_id(tok[1])) {
    emitf("EV-BADLINE %s malformed frame", guess);
    return;
  }
  const char *id = tok[1];
  long len = strtol(tok[2], &end, 10);
  size_t bl = strlen(tok[3]);
  unsigned char *payload = malloc(bl / 4 * 3 + 4);
  if (!payload) die("malloc");
  long dl = *end || len < 0 ? -1 : b64_decode(tok[3], bl, payload);
  if (dl < 0 || dl != len || memchr(payload, 0, (size_t)dl)) {
    emitf("EV-BADLINE %s bad payload", id);
    free(payload);
    return;
  }
  payload[dl] = 0;
  char kind = tok[0][0];
  if (kind != 'X' && kind != 'K') {
    emitf("EV-BADLINE %s unknown kind %c", id, kind);
    free(payload);
    return;
  }
  emitf("EV-ACK %s", id);
  if (seen_has(id)) { /* a re-sent frame we already have */
    free(payload);
    return;
  }
  seen_add(id);
  if (kind == 'X') {
    for (size_t i = 0; i < nearly; i++) {
      if (!strcmp(early[i].id, id)) {
        emitf("EV-DONE %s rc=%d", id, 128 + early[i].sig);
        early[i] = early[--nearly];
        free(payload);
        return;
      }
    }
    start_cmd(id, (const char *)payload);
  } else {
    char *sp = strchr((char *)payload, ' ');
    int sig = sp ? parse_sig(sp + 1) : -1;
    if (sp) *sp = 0;
    if (sig < 0 || !valid_id((char *)payload))
      emitf("EV-OUT %s evagent: bad kill request", id);
    else
      do_kill(id, (char *)payload, sig);
  }
  free(payload);
}

/* ------------------------------------------------------------ tty */

static void open_tty(void) {
  for (int tries = 0;; tries++) {
    tty = open(tty_path, O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (tty >= 0) break;
    if (tries >= 50) die(tty_path);
    usleep(100000);
  }
  struct termios t;
  if (tcgetattr(tty, &t) < 0) die("tcgetattr");
  cfmakeraw(&t);
  t.c_cflag |= CLOCAL | CREAD;
  t.c_cflag &= ~(tcflag_t)HUPCL;
  t.c_cc[VMIN] = 1;
  t.c_cc[VTIME] = 0;
  cfsetispeed(&t, B115200);
  cfsetospeed(&t, B115200);
  if (tcsetattr(tty, TCSANOW, &t) < 0) die("tcsetattr");
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: evagent TTY [READYFILE]\n");
    return 2;
  }
  tty_path = argv[1];
  crc_init();
  signal(SIGPIPE, SIG_IGN);
  signal(SIGINT, SIG_IGN);
  signal(SIGQUIT, SIG_IGN);
  signal(SIGHUP, SIG_IGN);
  prctl(PR_SET_CHILD_SUBREAPER, 1);
  if (pipe2(sigpipe_fd, O_CLOEXEC | O_NONBLOCK) < 0) die("pipe");
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_sigchld;
  sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGCHLD, &sa, NULL);
  mkdir("/run/ev", 0755);
  open_tty();
  emitf("EV-AGENT ready");
  if (argc > 2) {
    int f = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (f >= 0) close(f);
  }

  char *line = malloc(MAX_LINE + 1);
  if (!line) die("malloc");
  size_t llen = 0;
  int overlong = 0;
  struct pollfd *pfd = NULL;
  size_t pfd_cap = 0;

  for (;;) {
    if (pfd_cap < ncmds + 2) {
      pfd_cap = (ncmds + 2) * 2;
      pfd = realloc(pfd, pfd_cap * sizeof *pfd);
      if (!pfd) die("realloc");
    }
    size_t np = 0;
    pfd[np++] = (struct pollfd){.fd = tty, .events = POLLIN};
    pfd[np++] = (struct pollfd){.fd = sigpipe_fd[0], .events = POLLIN};
    for (size_t i = 0; i < ncmds; i++) pfd[np++] = (struct pollfd){.fd = cmds[i]->fd, .events = POLLIN};
    int pr = poll(pfd, np, ncmds ? 1000 : -1);
    if (pr < 0 && errno != EINTR) die("poll");
    if (pfd[1].revents) {
      char drain[256];
      while (read(sigpipe_fd[0], drain, sizeof drain) > 0) {
      }
    }
    /* command output first (so it precedes EV-DONE), then exits, then input */
    for (size_t i = 0; i < ncmds; i++)
      if (cmds[i]->fd >= 0 && pr > 0 && pfd[2 + i].fd == cmds[i]->fd && pfd[2 + i].revents) read_output(cmds[i]);
    reap();
    finish_done();
    if (pr > 0 && pfd[0].revents) {
      char buf[4096];
      ssize_t r = read(tty, buf, sizeof buf);
      if (r < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (r <= 0) { /* hang-up or error (should not happen): reopen */
        fprintf(stderr, "EV-ERROR evagent: read %s: %s, reopening\n", tty_path, r < 0 ? strerror(errno) : "EOF");
        close(tty);
        sleep(1);
        open_tty();
        continue;
      }
      for (ssize_t i = 0; i < r; i++) {
        char ch = buf[i];
        if (ch == '\n') {
          if (overlong) {
            emitf("EV-BADLINE - line longer than %u bytes", MAX_LINE);
          } else if (llen) {
            line[llen] = 0;
            handle_line(line, llen);
          }
          llen = 0;
          overlong = 0;
        } else if (ch == '\r') {
          /* ignored */
        } else if (llen < MAX_LINE) {
          line[llen++] = ch;
        } else {
          overlong = 1;
        }
      }
    }
  }
}
