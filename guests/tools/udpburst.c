/*
 * udpburst - UDP burst sender/receiver for the elastic-vhost test guests.
 *
 *   udpburst send [-r PPS] [-p SRCPORT] [-f FLOWS] HOST PORT COUNT SIZE
 *       Sends COUNT datagrams of SIZE bytes (>= 4) to HOST:PORT as fast as
 *       possible (or paced at PPS datagrams/s). Each datagram starts with a
 *       32-bit big-endian sequence number 0..COUNT-1. With -f, FLOWS sockets
 *       (source ports SRCPORT, SRCPORT+1, ...; SRCPORT default 40000) take
 *       turns: datagram s goes out of socket s % FLOWS.
 *       Prints: UDPBURST sent=N errors=E elapsed_us=T pps=P
 *
 *   udpburst recv [-w FIRST_MS] [-b RCVBUF] [-f] PORT COUNT TIMEOUT_MS
 *       Receives until COUNT datagrams arrived or no datagram arrived for
 *       TIMEOUT_MS (the wait for the first datagram is FIRST_MS, default
 *       max(TIMEOUT_MS, 60000)). SO_RCVBUF defaults to 8 MiB (forced as root).
 *       Prints "UDPBURST listening port=P rcvbuf=B" once the socket is bound,
 *       then one line:
 *       UDPBURST received=N inorder=yes|no dups=D firstgap=S lost=L stray=X elapsed_us=T
 *       firstgap is the lowest sequence number in 0..COUNT-1 that never
 *       arrived (-1 if none); lost = COUNT - distinct sequence numbers seen;
 *       stray counts datagrams with seq >= COUNT or shorter than 4 bytes.
 *       With -f, order is judged per flow (per source address and port), and
 *       the line ends with flows=F, the number of flows seen.
 *       Exit status 0 if all COUNT arrived in order without duplicates, else 1.
 *
 * Build: gcc -static -O2 -o udpburst udpburst.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void usage(void) {
  fprintf(stderr,
          "usage: udpburst send [-r PPS] [-p SRCPORT] [-f FLOWS] HOST PORT COUNT SIZE\n"
          "       udpburst recv [-w FIRST_MS] [-b RCVBUF] [-f] PORT COUNT TIMEOUT_MS\n");
  exit(2);
}

static long parse_num(const char *s, const char *what) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 0);
  if (errno || *end || v < 0) {
    fprintf(stderr, "udpburst: bad %s: %s\n", what, s);
    exit(2);
  }
  return v;
}

static int do_send(int argc, char **argv) {
  long pps = 0, srcport = 0, flows = 1;
  int opt;
  optind = 2;
  while ((opt = getopt(argc, argv, "r:p:f:")) != -1) {
    if (opt == 'r') pps = parse_num(optarg, "pps");
    else if (opt == 'p') srcport = parse_num(optarg, "source port");
    else if (opt == 'f') flows = parse_num(optarg, "flows");
    else usage();
  }
  if (flows < 1 || flows > 1024) {
    fprintf(stderr, "udpburst: flows must be 1..1024\n");
    return 2;
  }
  if (flows > 1 && !srcport) srcport = 40000;
  if (argc - optind != 4) usage();
  const char *host = argv[optind];
  const char *port = argv[optind + 1];
  long count = parse_num(argv[optind + 2], "count");
  long size = parse_num(argv[optind + 3], "size");
  if (size < 4 || size > 65507) {
    fprintf(stderr, "udpburst: size must be 4..65507\n");
    return 2;
  }

  struct sockaddr_in dst = {0};
  dst.sin_family = AF_INET;
  dst.sin_port = htons((uint16_t)parse_num(port, "port"));
  if (inet_pton(AF_INET, host, &dst.sin_addr) != 1) {
    fprintf(stderr, "udpburst: HOST must be an IPv4 address: %s\n", host);
    return 2;
  }
  int fds[1024];
  for (long f = 0; f < flows; f++) {
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) { perror("socket"); return 2; }
    int sndbuf = 4 << 20;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &sndbuf, sizeof sndbuf);
    if (srcport) {
      struct sockaddr_in sa = {0};
      sa.sin_family = AF_INET;
      sa.sin_port = htons((uint16_t)(srcport + f));
      if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) { perror("bind"); return 2; }
    }
    if (connect(fd, (struct sockaddr *)&dst, sizeof dst) < 0) { perror("connect"); return 2; }
    fds[f] = fd;
  }

  unsigned char *buf = malloc((size_t)size);
  if (!buf) return 2;
  for (long i = 0; i < size; i++) buf[i] = (unsigned char)(i * 7);

  long errors = 0;
  uint64_t t0 = now_ns();
  for (long seq = 0; seq < count; seq++) {
    if (pps > 0) {
      uint64_t due = t0 + (uint64_t)((double)seq * 1e9 / (double)pps);
      uint64_t n = now_ns();
      if (due > n) {
        struct timespec ts = {(time_t)((due - n) / 1000000000ull), (long)((due - n) % 1000000000ull)};
        nanosleep(&ts, NULL);
      }
    }
    uint32_t be = htonl((uint32_t)seq);
    memcpy(buf, &be, 4);
    for (;;) {
      ssize_t w = send(fds[seq % flows], buf, (size_t)size, 0);
      if (w >= 0) break;
      if (errno == ENOBUFS || errno == EAGAIN || errno == EINTR) { usleep(50); continue; }
      /* e.g. ECONNREFUSED from an ICMP port unreachable: count, keep going */
      errors++;
      if (errno != ECONNREFUSED) { perror("send"); }
      break;
    }
  }
  uint64_t el = (now_ns() - t0) / 1000;
  printf("UDPBURST sent=%ld errors=%ld elapsed_us=%llu pps=%llu\n", count, errors,
         (unsigned long long)el, (unsigned long long)(el ? (uint64_t)count * 1000000ull / el : 0));
  fflush(stdout);
  return errors ? 1 : 0;
}

static int do_recv(int argc, char **argv) {
  long first_ms = -1, rcvbuf = 8 << 20;
  int opt, per_flow = 0;
  optind = 2;
  while ((opt = getopt(argc, argv, "w:b:f")) != -1) {
    if (opt == 'w') first_ms = parse_num(optarg, "first wait");
    else if (opt == 'b') rcvbuf = parse_num(optarg, "rcvbuf");
    else if (opt == 'f') per_flow = 1;
    else usage();
  }
  if (argc - optind != 3) usage();
  long port = parse_num(argv[optind], "port");
  long count = parse_num(argv[optind + 1], "count");
  long timeout_ms = parse_num(argv[optind + 2], "timeout");
  if (first_ms < 0) first_ms = timeout_ms > 60000 ? timeout_ms : 60000;

  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  if (fd < 0) { perror("socket"); return 2; }
  int rb = (int)rcvbuf;
  if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rb, sizeof rb) < 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rb, sizeof rb);
  socklen_t sl = sizeof rb;
  getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rb, &sl);
  struct sockaddr_in sa = {0};
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)port);
  sa.sin_addr.s_addr = htonl(INADDR_ANY);
  if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) { perror("bind"); return 2; }
  printf("UDPBURST listening port=%ld rcvbuf=%d\n", port, rb);
  fflush(stdout);

  unsigned char *seen = calloc((size_t)(count ? count : 1), 1);
  unsigned char buf[65536];
  long received = 0, distinct = 0, dups = 0, stray = 0;
  long long last = -1;
  int inorder = 1;
  /* per flow (-f): the last seq per source port, and the source address of each */
  long long *flow_last = per_flow ? malloc(65536 * sizeof(long long)) : NULL;
  uint32_t *flow_addr = per_flow ? calloc(65536, sizeof(uint32_t)) : NULL;
  long nflows = 0;
  if (per_flow) for (long i = 0; i < 65536; i++) flow_last[i] = -2;
  uint64_t t_first = 0, t_last = 0;
  struct pollfd pfd = {.fd = fd, .events = POLLIN};

  while (distinct < count) {
    int to = received ? (int)timeout_ms : (int)first_ms;
    int pr = poll(&pfd, 1, to);
    if (pr < 0) {
      if (errno == EINTR) continue;
      perror("poll");
      break;
    }
    if (pr == 0) break; /* idle timeout */
    /* drain everything queued */
    for (;;) {
      struct sockaddr_in from = {0};
      socklen_t fl = sizeof from;
      ssize_t n = recvfrom(fd, buf, sizeof buf, MSG_DONTWAIT, (struct sockaddr *)&from, &fl);
      if (n < 0) break;
      t_last = now_ns();
      if (!t_first) t_first = t_last;
      if (n < 4) { stray++; continue; }
      uint32_t be;
      memcpy(&be, buf, 4);
      long long seq = ntohl(be);
      if (seq >= count) { stray++; continue; }
      received++;
      if (seen[seq]) { dups++; continue; }
      seen[seq] = 1;
      distinct++;
      if (per_flow) {
        uint16_t sp = ntohs(from.sin_port);
        if (flow_last[sp] == -2) {
          flow_last[sp] = -1;
          flow_addr[sp] = from.sin_addr.s_addr;
          nflows++;
        } else if (flow_addr[sp] != from.sin_addr.s_addr) {
          inorder = 0; /* two senders with one source port: their order cannot be told apart */
        }
        if (seq <= flow_last[sp]) inorder = 0;
        flow_last[sp] = seq;
      } else {
        if (seq <= last) inorder = 0;
        last = seq;
      }
      if (distinct >= count) break;
    }
  }
  long firstgap = -1;
  for (long i = 0; i < count; i++)
    if (!seen[i]) { firstgap = i; break; }
  /* a missing datagram is not an ordering violation, but a gap means "not
     all in order": inorder reports the order of what did arrive. */
  printf("UDPBURST received=%ld inorder=%s dups=%ld firstgap=%ld lost=%ld stray=%ld elapsed_us=%llu",
         distinct, inorder ? "yes" : "no", dups, firstgap, count - distinct, stray,
         (unsigned long long)(t_first ? (t_last - t_first) / 1000 : 0));
  if (per_flow) printf(" flows=%ld", nflows);
  printf("\n");
  fflush(stdout);
  return (distinct == count && inorder && dups == 0) ? 0 : 1;
}

int main(int argc, char **argv) {
  if (argc < 2) usage();
  if (!strcmp(argv[1], "send")) return do_send(argc, argv);
  if (!strcmp(argv[1], "recv")) return do_recv(argc, argv);
  usage();
  return 2;
}
