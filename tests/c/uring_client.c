/* A liburing client for the io_uring downgrade test (tests/test_downgrade.py,
 * issue 12); built by the test itself against Debian's liburing-dev.
 *
 *   uring_client PORT TOTAL_A TOTAL_B PRE_A READ_B ORDER TABLE_A TABLE_B
 *
 * Connects to 127.0.0.1:PORT (tests/programs/downgrade.py's server), sends
 * PRE_A bytes of stream A and reads READ_B of stream B with libc (on the
 * ring, with more in flight both ways), then sets up an io_uring and does
 * the rest through it: A to TOTAL_A (then shutdown(SHUT_WR)) and B to EOF,
 * one send and one recv in flight at a time, every byte of B checked.
 * ORDER: "after" (as above), "before" (the io_uring set up after connect,
 * before the first byte), "first" (before connect).  A stream is its
 * table (a file of the test's) repeated.  Prints "ok ..." lines. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "onfabric.h"

static const unsigned char *tab[2];
static size_t tlen[2];

static void die(const char *what)
{
	fprintf(stderr, "uring_client: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void load(int k, const char *path)
{
	int fd = open(path, O_RDONLY);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0)
		die(path);
	tlen[k] = (size_t)st.st_size;
	tab[k] = mmap(NULL, tlen[k], PROT_READ, MAP_PRIVATE, fd, 0);
	if (tab[k] == MAP_FAILED)
		die("mmap");
	close(fd);
}

/* n bytes of stream k from off */
static void fill(int k, size_t off, unsigned char *out, size_t n)
{
	while (n) {
		size_t o = off % tlen[k], m = tlen[k] - o < n ? tlen[k] - o : n;
		memcpy(out, tab[k] + o, m);
		out += m;
		off += m;
		n -= m;
	}
}

static void check_b(size_t off, const unsigned char *got, size_t n)
{
	unsigned char want[65536];
	fill(1, off, want, n);
	for (size_t i = 0; i < n; i++)
		if (got[i] != want[i]) {
			fprintf(stderr, "stream B: wrong byte at %zu (got %u, want %u)\n", off + i,
				got[i], want[i]);
			exit(1);
		}
}

static void ring_init(struct io_uring *r)
{
	int e = io_uring_queue_init(8, r, 0);
	if (e < 0) {
		errno = -e;
		die("io_uring_queue_init");
	}
}

int main(int argc, char **argv)
{
	if (argc != 9) {
		fprintf(stderr, "usage: uring_client PORT TOTAL_A TOTAL_B PRE_A READ_B ORDER TA TB\n");
		return 2;
	}
	size_t total_a = strtoul(argv[2], NULL, 10), total_b = strtoul(argv[3], NULL, 10);
	size_t pre_a = strtoul(argv[4], NULL, 10), read_b = strtoul(argv[5], NULL, 10);
	const char *order = argv[6];
	load(0, argv[7]);
	load(1, argv[8]);
	struct io_uring ring;
	if (!strcmp(order, "first"))
		ring_init(&ring);
	int s = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1]))};
	inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
	if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof(a)) < 0)
		die("connect");
	if (!strcmp(order, "before"))
		ring_init(&ring);
	static unsigned char sbuf[65536], rbuf[65536];
	size_t off_a = 0, off_b = 0;
	while (off_a < pre_a) { /* libc: on the ring (unless the io_uring came first) */
		size_t n = pre_a - off_a < sizeof(sbuf) ? pre_a - off_a : sizeof(sbuf);
		fill(0, off_a, sbuf, n);
		ssize_t w = send(s, sbuf, n, 0);
		if (w <= 0)
			die("send");
		off_a += (size_t)w;
	}
	while (off_b < read_b) {
		size_t n = read_b - off_b < sizeof(rbuf) ? read_b - off_b : sizeof(rbuf);
		ssize_t r = recv(s, rbuf, n, 0);
		if (r <= 0)
			die("recv");
		check_b(off_b, rbuf, (size_t)r);
		off_b += (size_t)r;
	}
	struct timespec ts = {0, 300000000};
	nanosleep(&ts, NULL); /* bytes in flight both ways */
	printf("ok client accelerated %ld\n", on_fabric());
	fflush(stdout);
	if (!strcmp(order, "after"))
		ring_init(&ring);
	printf("ok after setup accelerated %ld\n", on_fabric());
	fflush(stdout);
	/* the rest through io_uring: one send and one recv in flight */
	int sending = 0, receiving = 0, eof = 0, shut = 0;
	size_t slen = 0;
	for (;;) {
		if (!sending && off_a < total_a) {
			slen = total_a - off_a < sizeof(sbuf) ? total_a - off_a : sizeof(sbuf);
			fill(0, off_a, sbuf, slen);
			struct io_uring_sqe *q = io_uring_get_sqe(&ring);
			io_uring_prep_send(q, s, sbuf, slen, 0);
			io_uring_sqe_set_data64(q, 1);
			sending = 1;
		}
		if (off_a == total_a && !shut) {
			if (shutdown(s, SHUT_WR) < 0)
				die("shutdown");
			shut = 1;
		}
		if (!receiving && !eof) {
			struct io_uring_sqe *q = io_uring_get_sqe(&ring);
			io_uring_prep_recv(q, s, rbuf, sizeof(rbuf), 0);
			io_uring_sqe_set_data64(q, 2);
			receiving = 1;
		}
		if (!sending && !receiving)
			break;
		io_uring_submit(&ring);
		struct io_uring_cqe *c;
		int e = io_uring_wait_cqe(&ring, &c);
		if (e < 0) {
			errno = -e;
			die("io_uring_wait_cqe");
		}
		int res = c->res;
		uint64_t what = io_uring_cqe_get_data64(c);
		io_uring_cqe_seen(&ring, c);
		if (res < 0) {
			errno = -res;
			die(what == 1 ? "io_uring send" : "io_uring recv");
		}
		if (what == 1) {
			off_a += (size_t)res;
			sending = 0;
		} else {
			if (!res)
				eof = 1;
			check_b(off_b, rbuf, (size_t)res);
			off_b += (size_t)res;
			receiving = 0;
		}
	}
	if (off_b != total_b) {
		fprintf(stderr, "stream B: %zu of %zu bytes\n", off_b, total_b);
		return 1;
	}
	printf("ok client read %zu through io_uring %zu\n", off_b, off_b - read_b);
	io_uring_queue_exit(&ring);
	close(s);
	return 0;
}
