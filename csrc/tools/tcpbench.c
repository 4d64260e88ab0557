/* fastivc-tcpbench — an ordinary TCP benchmark program (it contains no
 * fastivc code): `fastivc bench` runs it plain and under `fastivc run`.
 *
 *   fastivc-tcpbench server --bind ADDR --port P --mode rr|stream|connect [--size N]
 *   fastivc-tcpbench client --host ADDR --port P --mode rr|stream|connect [--size N] [--seconds S]
 *   fastivc-tcpbench server ... --mode rr --epoll
 *   fastivc-tcpbench client ... --mode rr --idle N [--pause]
 *
 * Scale (`fastivc bench scale`): with --epoll the server serves every
 * connection at once from one epoll loop in one thread (it echoes what it
 * reads), instead of one connection after another.  With --idle N the client
 * opens N more connections after the busy one; each makes one 1-byte round
 * trip (so both ends have seen it work) and then stays idle, open, while the
 * busy connection runs the round trips.  Both raise their RLIMIT_NOFILE soft
 * limit as far as the hard limit allows.  --pause makes the client stop at
 * checkpoints, so a caller can look at the machine in between: it prints
 * {"checkpoint":"busy"} (the busy connection is up), then
 * {"checkpoint":"idle","idle":N} (all idle ones are up), then its result, and
 * after each waits for a line on stdin; after the result it then closes
 * everything and exits.
 *
 * --mode xfer (a correctness check, not a benchmark): the client sends --size
 * bytes of a pattern, the server checks every byte and answers with as many
 * bytes of another pattern, which the client checks; each prints
 * {"mode":"xfer","bytes":N,"ok":true|false}.
 *
 * The server prints "ready" once listening and serves connections one after
 * another until killed.  The client prints one JSON object; for rr it carries
 * percentiles and a quantile curve of the round-trip times (latency.h). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "latency.h"

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *what)
{
	fprintf(stderr, "fastivc-tcpbench: %s: %s\n", what, strerror(errno));
	exit(2);
}

static int write_all(int fd, const void *b, size_t n)
{
	const char *p = b;
	while (n) {
		ssize_t r = write(fd, p, n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		p += r;
		n -= (size_t)r;
	}
	return 0;
}

static ssize_t read_full(int fd, void *b, size_t n)
{
	char *p = b;
	size_t got = 0;
	while (got < n) {
		ssize_t r = read(fd, p + got, n - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return r < 0 ? -1 : (ssize_t)got;
		got += (size_t)r;
	}
	return (ssize_t)got;
}

static int resolve(const char *host, int port, struct sockaddr_storage *ss, socklen_t *len)
{
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICHOST}, *ai;
	char ps[16];
	snprintf(ps, sizeof(ps), "%d", port);
	if (getaddrinfo(host, ps, &hints, &ai) != 0)
		return -1;
	memcpy(ss, ai->ai_addr, ai->ai_addrlen);
	*len = ai->ai_addrlen;
	freeaddrinfo(ai);
	return 0;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* Byte i of pattern seed: deterministic, position-dependent. */
static uint8_t pattern(uint64_t seed, uint64_t i)
{
	uint64_t x = (i >> 3) * 0x9e3779b97f4a7c15ull ^ seed * 0xbf58476d1ce4e5b9ull;
	x ^= x >> 31;
	x *= 0x94d049bb133111ebull;
	x ^= x >> 29;
	return (uint8_t)(x >> (8 * (i & 7)));
}

/* Send n bytes of pattern seed in pieces of varying size. */
static int xfer_send(int fd, uint64_t seed, uint64_t n, char *buf, size_t bufsz)
{
	for (uint64_t off = 0, k = 1; off < n; k++) {
		size_t len = (size_t)((k * 7919) % bufsz) + 1;
		if (len > n - off)
			len = (size_t)(n - off);
		for (size_t j = 0; j < len; j++)
			buf[j] = (char)pattern(seed, off + j);
		if (write_all(fd, buf, len) < 0)
			return -1;
		off += len;
	}
	return 0;
}

/* Receive n bytes and check them against pattern seed: 1 all exact. */
static int xfer_check(int fd, uint64_t seed, uint64_t n, char *buf, size_t bufsz)
{
	int ok = 1;
	for (uint64_t off = 0; off < n;) {
		size_t want = bufsz < n - off ? bufsz : (size_t)(n - off);
		ssize_t r = read(fd, buf, want);
		if (r <= 0)
			return 0;
		for (ssize_t j = 0; j < r; j++)
			ok &= (uint8_t)buf[j] == pattern(seed, off + (uint64_t)j);
		off += (uint64_t)r;
	}
	return ok;
}

/* Raise the soft RLIMIT_NOFILE towards need (the hard limit when need is
 * 0); returns the soft limit now in force. */
static rlim_t raise_nofile(rlim_t need)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return 0;
	rlim_t want = need && need < rl.rlim_max ? need : rl.rlim_max;
	if (rl.rlim_cur < want) {
		rl.rlim_cur = want;
		if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
			getrlimit(RLIMIT_NOFILE, &rl);
	}
	return rl.rlim_cur;
}

/* Write n bytes to a non-blocking socket, waiting for room when it is full. */
static int write_all_nb(int fd, const char *p, size_t n)
{
	while (n) {
		ssize_t r = write(fd, p, n);
		if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			struct pollfd pf = {.fd = fd, .events = POLLOUT};
			poll(&pf, 1, -1);
			continue;
		}
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		p += r;
		n -= (size_t)r;
	}
	return 0;
}

/* The --epoll server: the listener and every connection in one epoll set,
 * level-triggered, one thread; echo whatever a connection sends. */
static void serve_epoll(int l, char *buf, size_t bufsz)
{
	int ep = epoll_create1(EPOLL_CLOEXEC);
	int fl = 1;
	struct epoll_event ev = {.events = EPOLLIN, .data.fd = l}, evs[256];
	if (ep < 0 || fcntl(l, F_SETFL, fcntl(l, F_GETFL) | O_NONBLOCK) < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, l, &ev) < 0)
		die("epoll");
	for (;;) {
		int n = epoll_wait(ep, evs, 256, -1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			die("epoll_wait");
		for (int i = 0; i < n; i++) {
			int fd = evs[i].data.fd;
			if (fd == l) {
				int c;
				while ((c = accept4(l, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
					setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &fl, sizeof(fl));
					struct epoll_event ce = {.events = EPOLLIN, .data.fd = c};
					if (epoll_ctl(ep, EPOLL_CTL_ADD, c, &ce) < 0)
						close(c);
				}
				continue;
			}
			ssize_t r = read(fd, buf, bufsz);
			if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
				continue;
			if (r <= 0 || write_all_nb(fd, buf, (size_t)r) < 0) {
				epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
				close(fd);
			}
		}
	}
}

/* --pause: say where we are and wait for a line on stdin. */
static void checkpoint(int pause, const char *json)
{
	if (!pause)
		return;
	char line[64];
	if (json) {
		printf("%s\n", json);
		fflush(stdout);
	}
	if (!fgets(line, sizeof(line), stdin))
		clearerr(stdin);
}

int main(int argc, char **argv)
{
	if (argc < 2)
		return 2;
	int server = strcmp(argv[1], "server") == 0;
	const char *host = "127.0.0.1", *mode = "rr";
	int port = 0;
	size_t size = 64;
	double seconds = 1;
	long idle = 0;
	int use_epoll = 0, pause = 0;
	static struct option opts[] = {{"bind", 1, 0, 'h'}, {"host", 1, 0, 'h'}, {"port", 1, 0, 'p'},
				       {"mode", 1, 0, 'm'}, {"size", 1, 0, 's'}, {"seconds", 1, 0, 'S'},
				       {"idle", 1, 0, 'i'}, {"epoll", 0, 0, 'e'}, {"pause", 0, 0, 'P'},
				       {0, 0, 0, 0}};
	int o;
	optind = 2;
	while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (o) {
		case 'h': host = optarg; break;
		case 'p': port = atoi(optarg); break;
		case 'm': mode = optarg; break;
		case 's': size = strtoul(optarg, NULL, 0); break;
		case 'S': seconds = strtod(optarg, NULL); break;
		case 'i': idle = strtol(optarg, NULL, 10); break;
		case 'e': use_epoll = 1; break;
		case 'P': pause = 1; break;
		default: return 2;
		}
	}
	int rr = !strcmp(mode, "rr"), stream = !strcmp(mode, "stream"), conn = !strcmp(mode, "connect");
	int xfer = !strcmp(mode, "xfer");
	if ((!rr && !stream && !conn && !xfer) || !port || !size ||
	    size > (xfer ? (4ull << 30) : (64u << 20)) || idle < 0 || idle > 1000000 ||
	    ((idle || use_epoll) && !rr)) {
		fprintf(stderr, "fastivc-tcpbench: bad arguments\n");
		return 2;
	}
	struct sockaddr_storage sa;
	socklen_t sl;
	if (resolve(host, port, &sa, &sl) < 0) {
		fprintf(stderr, "fastivc-tcpbench: bad address %s\n", host);
		return 2;
	}
	size_t bufsz = size < 65536 || xfer ? 65536 : size;
	char *buf = calloc(1, bufsz);
	int one = 1;
	if (server) {
		int l = socket(sa.ss_family, SOCK_STREAM, 0);
		setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (l < 0 || bind(l, (struct sockaddr *)&sa, sl) < 0 || listen(l, 1024) < 0)
			die("listen");
		printf("ready\n");
		fflush(stdout);
		if (use_epoll) {
			raise_nofile(0);
			serve_epoll(l, buf, bufsz);
		}
		for (;;) {
			int c = accept(l, NULL, NULL);
			if (c < 0)
				continue;
			setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
			if (xfer) {
				int ok = xfer_check(c, 1, size, buf, bufsz);
				printf("{\"mode\":\"xfer\",\"bytes\":%zu,\"ok\":%s}\n", size,
				       ok ? "true" : "false");
				fflush(stdout);
				xfer_send(c, 2, size, buf, bufsz);
			} else if (rr) {
				while (read_full(c, buf, size) == (ssize_t)size)
					if (write_all(c, buf, size) < 0)
						break;
			} else if (stream) {
				uint64_t total = 0;
				ssize_t r;
				while ((r = read(c, buf, bufsz)) > 0)
					total += (uint64_t)r;
				write_all(c, &total, sizeof(total));
			} else if (read_full(c, buf, 64) == 64) {
				write_all(c, buf, 64);
			}
			close(c);
		}
	}
	uint64_t dur = (uint64_t)(seconds * 1e9);
	if (xfer) {
		int c = socket(sa.ss_family, SOCK_STREAM, 0);
		if (c < 0 || connect(c, (struct sockaddr *)&sa, sl) < 0)
			die("connect");
		if (xfer_send(c, 1, size, buf, bufsz) < 0)
			die("send");
		int ok = xfer_check(c, 2, size, buf, bufsz);
		printf("{\"mode\":\"xfer\",\"bytes\":%zu,\"ok\":%s}\n", size, ok ? "true" : "false");
		close(c);
		return ok ? 0 : 1;
	}
	if (conn) {
		uint64_t t0 = now_ns(), n = 0;
		while (now_ns() - t0 < dur) {
			int c = socket(sa.ss_family, SOCK_STREAM, 0);
			if (c < 0 || connect(c, (struct sockaddr *)&sa, sl) < 0)
				die("connect");
			if (write_all(c, buf, 64) < 0 || read_full(c, buf, 64) != 64)
				die("request");
			/* the server closes first (its side keeps TIME_WAIT), as an
			 * HTTP/1.0 server does; we close on its EOF */
			if (read(c, buf, 1) != 0)
				die("expected EOF");
			close(c);
			n++;
		}
		double el = (double)(now_ns() - t0) / 1e9;
		printf("{\"mode\":\"connect\",\"connections\":%llu,\"seconds\":%.4f,\"rate\":%.1f}\n",
		       (unsigned long long)n, el, (double)n / el);
		return 0;
	}
	int c = socket(sa.ss_family, SOCK_STREAM, 0);
	if (c < 0 || connect(c, (struct sockaddr *)&sa, sl) < 0)
		die("connect");
	setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (rr) {
		size_t cap = 1u << 22, n = 0;
		uint64_t *lat = malloc(cap * sizeof(*lat));
		for (int i = 0; i < 200; i++)
			if (write_all(c, buf, size) < 0 || read_full(c, buf, size) != (ssize_t)size)
				die("warm-up");
		int *idle_fd = NULL;
		if (idle) {
			rlim_t need = (rlim_t)idle + 32;
			rlim_t got = raise_nofile(need);
			if (got < need) {
				fprintf(stderr, "fastivc-tcpbench: --idle %ld needs %llu file descriptors; "
					"RLIMIT_NOFILE allows %llu\n", idle, (unsigned long long)need,
					(unsigned long long)got);
				return 2;
			}
			idle_fd = malloc((size_t)idle * sizeof(*idle_fd));
		}
		checkpoint(pause, "{\"checkpoint\":\"busy\"}");
		for (long k = 0; k < idle; k++) {
			char b = 'i';
			int d = socket(sa.ss_family, SOCK_STREAM, 0);
			if (d < 0 || connect(d, (struct sockaddr *)&sa, sl) < 0) {
				fprintf(stderr, "fastivc-tcpbench: idle connection %ld of %ld: connect: %s\n",
					k + 1, idle, strerror(errno));
				return 2;
			}
			setsockopt(d, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
			if (write_all(d, &b, 1) < 0 || read_full(d, &b, 1) != 1) {
				fprintf(stderr, "fastivc-tcpbench: idle connection %ld of %ld: no echo: %s\n",
					k + 1, idle, strerror(errno));
				return 2;
			}
			idle_fd[k] = d;
		}
		char cp[96];
		snprintf(cp, sizeof(cp), "{\"checkpoint\":\"idle\",\"idle\":%ld}", idle);
		if (idle)
			checkpoint(pause, cp);
		uint64_t t0 = now_ns(), t = t0;
		while (t - t0 < dur && n < cap) {
			if (write_all(c, buf, size) < 0 || read_full(c, buf, size) != (ssize_t)size)
				die("request");
			uint64_t t1 = now_ns();
			lat[n++] = t1 - t;
			t = t1;
		}
		qsort(lat, n, sizeof(*lat), cmp_u64);
		double sum = 0;
		for (size_t i = 0; i < n; i++)
			sum += (double)lat[i];
		printf("{\"mode\":\"rr\",\"size\":%zu,\"idle\":%ld,\"samples\":%zu,\"p50_us\":%.3f,\"p99_us\":%.3f,"
		       "\"rate\":%.1f,\"min_us\":%.3f,\"mean_us\":%.3f", size, idle, n, lat[n / 2] / 1e3,
		       lat[n * 99 / 100] / 1e3, (double)n / ((double)(t - t0) / 1e9), lat[0] / 1e3,
		       sum / (double)n / 1e3);
		lat_print_fields(stdout, lat, n);
		printf("}\n");
		fflush(stdout);
		checkpoint(pause, NULL); /* the caller may stop the server first */
		for (long k = 0; k < idle; k++)
			close(idle_fd[k]);
	} else {
		uint64_t t0 = now_ns(), sent = 0;
		while (now_ns() - t0 < dur)
			for (int i = 0; i < 16; i++) {
				if (write_all(c, buf, size) < 0)
					die("write");
				sent += size;
			}
		shutdown(c, SHUT_WR);
		uint64_t total = 0;
		if (read_full(c, &total, sizeof(total)) != sizeof(total) || total != sent) {
			fprintf(stderr, "fastivc-tcpbench: server counted %llu of %llu bytes\n",
				(unsigned long long)total, (unsigned long long)sent);
			return 1;
		}
		double el = (double)(now_ns() - t0) / 1e9;
		printf("{\"mode\":\"stream\",\"size\":%zu,\"bytes\":%llu,\"seconds\":%.4f,\"gbps\":%.4f}\n",
		       size, (unsigned long long)total, el, (double)total / el / 1e9);
	}
	close(c);
	return 0;
}
