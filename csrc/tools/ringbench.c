/* fastivc-ringbench — one measurement of the channel or of TCP loopback, two
 * processes (fork), printed as one JSON object.  `fastivc bench ring` runs it
 * repeatedly, both transports side by side, and does the statistics.
 *
 *   fastivc-ringbench --transport ring|tcp --mode rr|stream --size BYTES
 *                     [--seconds S] [--spin-us N] [--ring-kib N] [--fabric PATH]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fastivc/channel.h"
#include "fastivc/util.h"
#include "latency.h"

struct ep {
	int fd;                 /* tcp */
	struct fivc_fabric fab; /* ring */
	struct fivc_chan ch;
	int ring;
};

static void die(const char *what, long r)
{
	fprintf(stderr, "fastivc-ringbench: %s: %s\n", what, strerror(r < 0 ? (int)-r : errno));
	exit(2);
}

static void ep_write(struct ep *e, const void *buf, size_t n)
{
	const char *p = buf;
	while (n) {
		ssize_t r = e->ring ? fivc_chan_write(&e->ch, p, n, 0) : write(e->fd, p, n);
		if (r < 0 && !e->ring && errno == EINTR)
			continue;
		if (r <= 0)
			die("write", r < 0 && e->ring ? r : -errno);
		p += r;
		n -= (size_t)r;
	}
}

/* Returns bytes read (0 at EOF). */
static size_t ep_read(struct ep *e, void *buf, size_t n, int exact)
{
	char *p = buf;
	size_t got = 0;
	while (got < n) {
		ssize_t r = e->ring ? fivc_chan_read(&e->ch, p + got, n - got, 0)
				    : read(e->fd, p + got, n - got);
		if (r < 0 && !e->ring && errno == EINTR)
			continue;
		if (r < 0)
			die("read", e->ring ? r : -errno);
		if (r == 0)
			break;
		got += (size_t)r;
		if (!exact)
			break;
	}
	return got;
}

static void ep_shut_wr(struct ep *e)
{
	if (e->ring)
		fivc_chan_shutdown(&e->ch, SHUT_WR);
	else
		shutdown(e->fd, SHUT_WR);
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
	const char *transport = "ring", *mode = "rr", *fabric = NULL;
	size_t size = 64;
	double seconds = 1.0;
	long spin_us = -1, ring_kib = 0; /* 0: the library's default */
	static struct option opts[] = {
		{"transport", required_argument, 0, 't'}, {"mode", required_argument, 0, 'm'},
		{"size", required_argument, 0, 's'},      {"seconds", required_argument, 0, 'S'},
		{"spin-us", required_argument, 0, 'p'},   {"ring-kib", required_argument, 0, 'k'},
		{"fabric", required_argument, 0, 'f'},    {0, 0, 0, 0}};
	int o;
	while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (o) {
		case 't': transport = optarg; break;
		case 'm': mode = optarg; break;
		case 's': size = strtoul(optarg, NULL, 0); break;
		case 'S': seconds = strtod(optarg, NULL); break;
		case 'p': spin_us = strtol(optarg, NULL, 0); break;
		case 'k': ring_kib = strtol(optarg, NULL, 0); break;
		case 'f': fabric = optarg; break;
		default: return 2;
		}
	}
	int ring = strcmp(transport, "ring") == 0;
	int rr = strcmp(mode, "rr") == 0;
	if ((!ring && strcmp(transport, "tcp")) || (!rr && strcmp(mode, "stream")) || !size ||
	    size > (64u << 20) || seconds <= 0) {
		fprintf(stderr, "fastivc-ringbench: bad arguments\n");
		return 2;
	}
	char fpath[256];
	if (ring && !fabric) {
		snprintf(fpath, sizeof(fpath), "/dev/shm/fastivc-bench.%d", (int)getpid());
		fabric = fpath;
		unlink(fabric);
	}
	struct ep e = {.fd = -1, .ring = ring};
	uint32_t slot = 0, gen = 0;
	int lfd = -1;
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	char err[512];
	if (ring) {
		struct fivc_geometry g = {.nslots = 4, .nmembers = 64, .noffers = 16,
					  .ring_size = (uint32_t)ring_kib * 1024};
		int r = fivc_fabric_open(fabric, &g, &e.fab, err, sizeof(err));
		if (r < 0) {
			fprintf(stderr, "fastivc-ringbench: %s\n", err);
			return 2;
		}
		ring_kib = (long)(e.fab.g.ring_size / 1024);
		if ((r = fivc_slot_claim(&e.fab, NULL, 1, &slot, &gen)) < 0)
			die("slot claim", r);
	} else {
		socklen_t sl = sizeof(sa);
		lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
		    listen(lfd, 1) < 0 || getsockname(lfd, (struct sockaddr *)&sa, &sl) < 0)
			die("listen", -errno);
	}
	size_t bufsz = size < 65536 ? 65536 : size;
	char *buf = malloc(bufsz);
	memset(buf, 0x5a, bufsz);
	int sync[2];
	if (pipe(sync) < 0)
		die("pipe", -errno);
	pid_t child = fork();
	if (child < 0)
		die("fork", -errno);
	if (child == 0) {
		/* server: its own member of the fabric, or the accepted socket */
		struct ep s = {.fd = -1, .ring = ring};
		if (ring) {
			int r = fivc_fabric_open(fabric, NULL, &s.fab, err, sizeof(err));
			if (r < 0 || (r = fivc_slot_attach(&s.fab, slot, gen)) < 0 ||
			    (r = fivc_chan_open(&s.ch, &s.fab, slot, gen, FIVC_SIDE_SERVER)) < 0)
				die("server attach", r);
			if (spin_us >= 0)
				s.ch.spin_ns = (uint64_t)spin_us * 1000;
		} else {
			s.fd = accept(lfd, NULL, NULL);
			if (s.fd < 0)
				die("accept", -errno);
			int one = 1;
			setsockopt(s.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		}
		if (write(sync[1], "r", 1) != 1)
			die("sync", -errno);
		if (rr) {
			while (ep_read(&s, buf, size, 1) == size)
				ep_write(&s, buf, size);
		} else {
			uint64_t total = 0;
			size_t n;
			while ((n = ep_read(&s, buf, bufsz, 0)) > 0)
				total += n;
			ep_write(&s, &total, sizeof(total));
		}
		_exit(0);
	}
	if (ring) {
		int r = fivc_chan_open(&e.ch, &e.fab, slot, gen, FIVC_SIDE_CLIENT);
		if (r < 0)
			die("client open", r);
		if (spin_us >= 0)
			e.ch.spin_ns = (uint64_t)spin_us * 1000;
	} else {
		e.fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (e.fd < 0 || connect(e.fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
			die("connect", -errno);
		int one = 1;
		setsockopt(e.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	}
	char c;
	if (read(sync[0], &c, 1) != 1)
		die("sync", -errno);
	uint64_t dur = (uint64_t)(seconds * 1e9);
	if (rr) {
		size_t cap = 1u << 22, n = 0;
		uint64_t *lat = malloc(cap * sizeof(*lat));
		for (int i = 0; i < 200; i++) { /* warm-up */
			ep_write(&e, buf, size);
			ep_read(&e, buf, size, 1);
		}
		uint64_t t0 = fivc_now_ns(CLOCK_MONOTONIC), t = t0;
		while (t - t0 < dur && n < cap) {
			ep_write(&e, buf, size);
			if (ep_read(&e, buf, size, 1) != size)
				die("short reply", -EPROTO);
			uint64_t t1 = fivc_now_ns(CLOCK_MONOTONIC);
			lat[n++] = t1 - t;
			t = t1;
		}
		ep_shut_wr(&e);
		qsort(lat, n, sizeof(*lat), cmp_u64);
		double sum = 0;
		for (size_t i = 0; i < n; i++)
			sum += (double)lat[i];
		printf("{\"transport\":\"%s\",\"mode\":\"rr\",\"size\":%zu,\"samples\":%zu,"
		       "\"p50_us\":%.3f,\"p99_us\":%.3f,\"min_us\":%.3f,\"mean_us\":%.3f,"
		       "\"spin_us\":%ld,\"ring_kib\":%ld",
		       transport, size, n, lat[n / 2] / 1e3, lat[(n * 99) / 100] / 1e3,
		       lat[0] / 1e3, sum / (double)n / 1e3, ring ? (long)(e.ch.spin_ns / 1000) : -1L,
		       ring ? ring_kib : -1L);
		lat_print_fields(stdout, lat, n);
		printf("}\n");
	} else {
		uint64_t t0 = fivc_now_ns(CLOCK_MONOTONIC), sent = 0;
		while (fivc_now_ns(CLOCK_MONOTONIC) - t0 < dur) {
			for (int i = 0; i < 16; i++) {
				ep_write(&e, buf, size);
				sent += size;
			}
		}
		ep_shut_wr(&e);
		uint64_t total = 0;
		if (ep_read(&e, &total, sizeof(total), 1) != sizeof(total) || total != sent)
			die("stream byte count mismatch", -EPROTO);
		uint64_t t1 = fivc_now_ns(CLOCK_MONOTONIC);
		printf("{\"transport\":\"%s\",\"mode\":\"stream\",\"size\":%zu,\"bytes\":%llu,"
		       "\"seconds\":%.6f,\"gbps\":%.4f,\"spin_us\":%ld,\"ring_kib\":%ld}\n",
		       transport, size, (unsigned long long)total, (t1 - t0) / 1e9,
		       (double)total / (double)(t1 - t0), ring ? (long)(e.ch.spin_ns / 1000) : -1L,
		       ring ? ring_kib : -1L);
	}
	int st;
	waitpid(child, &st, 0);
	if (ring) {
		fivc_chan_close(&e.ch);
		fivc_fabric_close(&e.fab);
		if (fabric == fpath)
			unlink(fabric);
	}
	return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : 1;
}
