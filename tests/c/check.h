/* Minimal test helpers for the C tests: each program runs its tests in order
 * and exits non-zero at the first failed check, naming file and line. */
#ifndef FIVC_CHECK_H
#define FIVC_CHECK_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>

#include "fastivc/channel.h"
#include "fastivc/atomics.h"
#include "fastivc/fabric.h"
#include "fastivc/util.h"

/* the check, and what a failure then does (exit; _exit in a forked child) */
#define CHECK_THEN(cond, fail)                                                   \
	do {                                                                     \
		if (!(cond)) {                                                   \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
			fail;                                                    \
		}                                                                \
	} while (0)

#define CHECK(cond) CHECK_THEN(cond, exit(1))

#define CHECK_EQ(a, b)                                                           \
	do {                                                                     \
		long long _a = (long long)(a), _b = (long long)(b);             \
		if (_a != _b) {                                                  \
			fprintf(stderr, "%s:%d: %s == %lld, expected %s == %lld\n", \
				__FILE__, __LINE__, #a, _a, #b, _b);            \
			exit(1);                                                 \
		}                                                                \
	} while (0)

#define RUN(t)                                  \
	do {                                    \
		t();                            \
		printf("ok %s\n", #t);          \
		fflush(stdout);                 \
	} while (0)

/* A fabric in anonymous shared memory with two views that act as two
 * members (ids 1 and 2): enough for single-process channel tests. */
struct memfab {
	void *mem;
	uint64_t len;
	struct fivc_fabric a, b;
};

static inline void memfab_init(struct memfab *m, uint32_t ring_size)
{
	struct fivc_geometry g = {.nmembers = 4, .noffers = 8, .nslots = 4, .ring_size = ring_size};
	struct fivc_fabric L;
	CHECK(fivc_layout_compute(&g, &L, &m->len) == 0);
	m->mem = mmap(NULL, m->len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	CHECK(m->mem != MAP_FAILED);
	CHECK(fivc_fabric_format(m->mem, m->len, &g) == 0);
	char err[256];
	CHECK(fivc_fabric_attach_mem(m->mem, m->len, &m->a, err, sizeof(err)) == 0);
	CHECK(fivc_fabric_attach_mem(m->mem, m->len, &m->b, err, sizeof(err)) == 0);
	m->a.self = 1;
	m->b.self = 2;
}

static inline void memfab_free(struct memfab *m) { munmap(m->mem, m->len); }

/* Claim a slot as a and attach as b; open both channel ends. */
static inline void memfab_pair(struct memfab *m, struct fivc_chan *cli, struct fivc_chan *srv)
{
	uint32_t slot, gen;
	CHECK(fivc_slot_claim(&m->a, NULL, 42, &slot, &gen) == 0);
	CHECK(fivc_slot_attach(&m->b, slot, gen) == 0);
	CHECK(fivc_chan_open(cli, &m->a, slot, gen, FIVC_SIDE_CLIENT) == 0);
	CHECK(fivc_chan_open(srv, &m->b, slot, gen, FIVC_SIDE_SERVER) == 0);
}

/* Content of the test byte stream at position p: a function of p alone, so
 * a reader can verify any chunk without shared state. */
static inline uint64_t splitmix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}
static inline uint8_t stream_byte(uint64_t seed, uint64_t p)
{
	return (uint8_t)(splitmix64(seed ^ (p >> 3)) >> ((p & 7) * 8));
}
static inline void stream_fill(uint64_t seed, uint64_t pos, uint8_t *buf, size_t n)
{
	size_t i = 0;
	for (; i < n && ((pos + i) & 7); i++)
		buf[i] = stream_byte(seed, pos + i);
	for (; i + 8 <= n; i += 8) {
		uint64_t v = splitmix64(seed ^ ((pos + i) >> 3));
		memcpy(buf + i, &v, 8);
	}
	for (; i < n; i++)
		buf[i] = stream_byte(seed, pos + i);
}
/* Returns the index of the first mismatch, or n. */
static inline size_t stream_verify(uint64_t seed, uint64_t pos, const uint8_t *buf, size_t n)
{
	size_t i = 0;
	for (; i < n && ((pos + i) & 7); i++)
		if (buf[i] != stream_byte(seed, pos + i))
			return i;
	for (; i + 8 <= n; i += 8) {
		uint64_t v = splitmix64(seed ^ ((pos + i) >> 3));
		if (memcmp(buf + i, &v, 8) != 0)
			for (size_t j = i; j < i + 8; j++)
				if (buf[j] != stream_byte(seed, pos + j))
					return j;
	}
	for (; i < n; i++)
		if (buf[i] != stream_byte(seed, pos + i))
			return i;
	return n;
}

#endif
