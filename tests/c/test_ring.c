/* Channel unit tests on an in-memory fabric: empty/full/EAGAIN, wrap-around
 * at every ring offset, writes of 1 byte to 4x the ring size, PEEK, WAITALL,
 * EOF, EPIPE and the sleep/wake path; rings that grow onto pool buffers and
 * shrink back (layout.h). */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include "check.h"

#define RING 4096u

static void test_empty_full_eagain(void)
{
	struct memfab m;
	struct fivc_chan c, s;
	uint8_t buf[RING * 2];
	int eof;
	memfab_init(&m, RING);
	memfab_pair(&m, &c, &s);
	CHECK_EQ(fivc_chan_read(&s, buf, 10, FIVC_NONBLOCK), -EAGAIN);
	CHECK_EQ(fivc_chan_readable(&s, &eof), 0);
	CHECK_EQ(eof, 0);
	CHECK_EQ(fivc_chan_writable(&c), RING);
	stream_fill(1, 0, buf, RING + 1);
	CHECK_EQ(fivc_chan_write(&c, buf, RING + 1, FIVC_NONBLOCK), RING); /* partial */
	CHECK_EQ(fivc_chan_write(&c, buf, 1, FIVC_NONBLOCK), -EAGAIN);
	CHECK_EQ(fivc_chan_writable(&c), 0);
	CHECK_EQ(fivc_chan_readable(&s, &eof), RING);
	memset(buf, 0, sizeof(buf));
	CHECK_EQ(fivc_chan_read(&s, buf, sizeof(buf), FIVC_NONBLOCK), RING);
	CHECK_EQ(stream_verify(1, 0, buf, RING), RING);
	CHECK_EQ(fivc_chan_read(&s, buf, 1, FIVC_NONBLOCK), -EAGAIN);
	CHECK_EQ(fivc_chan_writable(&c), RING);
	CHECK_EQ(fivc_chan_write(&c, buf, 0, 0), 0);
	fivc_chan_close(&c);
	fivc_chan_close(&s);
	memfab_free(&m);
}

/* Move both ends of an empty ring to ring offset o. */
static void align_to(struct fivc_chan *c, struct fivc_chan *s, uint64_t *pos, uint64_t o)
{
	uint8_t buf[RING];
	uint64_t k = (o - (*pos % RING) + RING) % RING;
	if (!k)
		return;
	stream_fill(2, *pos, buf, k);
	CHECK_EQ(fivc_chan_write(c, buf, k, FIVC_NONBLOCK), k);
	CHECK_EQ(fivc_chan_read(s, buf, k, FIVC_NONBLOCK), k);
	CHECK_EQ(stream_verify(2, *pos, buf, k), k);
	*pos += k;
}

static void test_wrap_every_boundary(void)
{
	struct memfab m;
	struct fivc_chan c, s;
	uint8_t buf[RING], out[RING];
	uint64_t pos = 0;
	memfab_init(&m, RING);
	memfab_pair(&m, &c, &s);
	for (uint64_t o = 0; o < RING; o++) {
		uint64_t lens[] = {1, 2, 8, RING - o, RING - o + 1, RING - 1, RING};
		for (size_t li = 0; li < sizeof(lens) / sizeof(lens[0]); li++) {
			uint64_t len = lens[li];
			if (!len || len > RING)
				continue;
			align_to(&c, &s, &pos, o);
			stream_fill(2, pos, buf, len);
			CHECK_EQ(fivc_chan_write(&c, buf, len, FIVC_NONBLOCK), len);
			/* read it back in two pieces split at a varying point */
			uint64_t cut = (o * 7 + li) % len;
			if (cut)
				CHECK_EQ(fivc_chan_read(&s, out, cut, FIVC_NONBLOCK), cut);
			CHECK_EQ(fivc_chan_read(&s, out + cut, RING, FIVC_NONBLOCK), len - cut);
			CHECK_EQ(stream_verify(2, pos, out, len), len);
			pos += len;
		}
	}
	fivc_chan_close(&c);
	fivc_chan_close(&s);
	memfab_free(&m);
}

struct xfer {
	struct fivc_chan *ch;
	uint64_t total;
	uint64_t seed;
	int spin_off;
	int fail;
};

static void *reader_thread(void *arg)
{
	struct xfer *x = arg;
	static __thread uint8_t buf[RING * 5];
	uint64_t pos = 0, rnd = 7;
	while (pos < x->total) {
		rnd = splitmix64(rnd);
		size_t want = (size_t)(rnd % sizeof(buf)) + 1;
		if (want > x->total - pos)
			want = (size_t)(x->total - pos); /* WAITALL must not ask past the end */
		ssize_t r = fivc_chan_read(x->ch, buf, want, (rnd >> 40) & 1 ? FIVC_WAITALL : 0);
		if (r <= 0 || stream_verify(x->seed, pos, buf, (size_t)r) != (size_t)r) {
			x->fail = 1;
			return NULL;
		}
		pos += (uint64_t)r;
	}
	return NULL;
}

static void test_writes_1_to_4x_ring(void)
{
	struct memfab m;
	struct fivc_chan c, s;
	memfab_init(&m, RING);
	memfab_pair(&m, &c, &s);
	uint64_t total = 0;
	for (size_t n = 1; n <= 4 * RING; n++)
		total += n;
	struct xfer x = {.ch = &s, .total = total, .seed = 3};
	pthread_t t;
	CHECK(pthread_create(&t, NULL, reader_thread, &x) == 0);
	static uint8_t buf[4 * RING];
	uint64_t pos = 0;
	for (size_t n = 1; n <= 4 * RING; n++) {
		stream_fill(3, pos, buf, n);
		CHECK_EQ(fivc_chan_write(&c, buf, n, 0), n); /* blocking: all of it */
		pos += n;
	}
	pthread_join(t, NULL);
	CHECK_EQ(x.fail, 0);
	fivc_chan_close(&c);
	fivc_chan_close(&s);
	memfab_free(&m);
}

static void test_peek_and_waitall(void)
{
	struct memfab m;
	struct fivc_chan c, s;
	uint8_t buf[256], out[256];
	int eof;
	memfab_init(&m, RING);
	memfab_pair(&m, &c, &s);
	stream_fill(4, 0, buf, 200);
	CHECK_EQ(fivc_chan_write(&c, buf, 100, 0), 100);
	CHECK_EQ(fivc_chan_read(&s, out, 50, FIVC_PEEK), 50);
	CHECK_EQ(stream_verify(4, 0, out, 50), 50);
	CHECK_EQ(fivc_chan_readable(&s, &eof), 100); /* peek consumed nothing */
	CHECK_EQ(fivc_chan_read(&s, out, 200, FIVC_PEEK | FIVC_NONBLOCK), 100);
	/* WAITALL for 200 with 100 available: returns what there is at EOF */
	CHECK_EQ(fivc_chan_write(&c, buf + 100, 100, 0), 100);
	CHECK_EQ(fivc_chan_read(&s, out, 150, FIVC_WAITALL), 150);
	CHECK_EQ(stream_verify(4, 0, out, 150), 150);
	fivc_chan_shutdown(&c, SHUT_WR);
	CHECK_EQ(fivc_chan_read(&s, out, 100, FIVC_WAITALL), 50);
	CHECK_EQ(stream_verify(4, 150, out, 50), 50);
	CHECK_EQ(fivc_chan_read(&s, out, 100, 0), 0); /* EOF */
	CHECK_EQ(fivc_chan_readable(&s, &eof), 0);
	CHECK_EQ(eof, 1);
	fivc_chan_close(&c);
	fivc_chan_close(&s);
	memfab_free(&m);
}

static void test_eof_after_drain_and_epipe(void)
{
	struct memfab m;
	struct fivc_chan c, s;
	uint8_t buf[64];
	memfab_init(&m, RING);
	memfab_pair(&m, &c, &s);
	CHECK_EQ(fivc_chan_write(&c, "hello", 5, 0), 5);
	CHECK_EQ(fivc_chan_shutdown(&c, SHUT_WR), 0);
	CHECK_EQ(fivc_chan_write(&c, "x", 1, 0), -EPIPE);
	CHECK_EQ(fivc_chan_read(&s, buf, sizeof(buf), 0), 5);
	CHECK(memcmp(buf, "hello", 5) == 0);
	CHECK_EQ(fivc_chan_read(&s, buf, sizeof(buf), 0), 0);
	/* the other direction still works until the server stops reading */
	CHECK_EQ(fivc_chan_write(&s, "back", 4, 0), 4);
	CHECK_EQ(fivc_chan_read(&c, buf, sizeof(buf), 0), 4);
	/* c has shut both ways now (FIN_WAIT): bytes to it are taken, and
	 * reset it, as TCP's (tcp_rcv_state_process); the writer, which had
	 * c's FIN, gets EPIPE for its next write */
	CHECK_EQ(fivc_chan_shutdown(&c, SHUT_RD), 0);
	CHECK_EQ(fivc_chan_write(&s, "more", 4, 0), 4);
	CHECK_EQ(fivc_chan_read(&c, buf, sizeof(buf), 0), -ECONNRESET);
	CHECK_EQ(fivc_chan_read(&c, buf, sizeof(buf), 0), 0);
	CHECK_EQ(fivc_chan_write(&s, "more", 4, 0), -EPIPE);
	fivc_chan_close(&c);
	fivc_chan_close(&s);
	/* SHUT_RD alone tells the peer nothing (TCP sends nothing for it):
	 * its writes go on; our reads take what is there, then 0 at once */
	memfab_pair(&m, &c, &s);
	CHECK_EQ(fivc_chan_shutdown(&c, SHUT_RD), 0);
	CHECK_EQ(fivc_chan_write(&s, "more", 4, 0), 4);
	CHECK_EQ(fivc_chan_read(&c, buf, sizeof(buf), 0), 4);
	CHECK_EQ(fivc_chan_read(&c, buf, sizeof(buf), 0), 0);
	CHECK_EQ(fivc_chan_read(&c, buf, 0, FIVC_NONBLOCK), 0);
	/* a close with nothing unread tells the writer nobody reads: its
	 * next bytes are taken and the reset comes back (EPIPE: c's FIN came) */
	fivc_chan_close(&c);
	CHECK_EQ(fivc_chan_write(&s, "more", 4, 0), 4);
	CHECK_EQ(fivc_chan_write(&s, "more", 4, 0), -EPIPE);
	fivc_chan_close(&s);
	memfab_pair(&m, &c, &s); /* (a fresh pair for the rest) */
	CHECK_EQ(fivc_chan_shutdown(&c, 99), -EINVAL);
	fivc_chan_close(&c);
	fivc_chan_close(&s);
	memfab_free(&m);
}

struct pp {
	struct fivc_chan *ch;
	int n;
};

static void *echo_thread(void *arg)
{
	struct pp *p = arg;
	uint8_t b[64];
	for (int i = 0; i < p->n; i++) {
		if (fivc_chan_read(p->ch, b, sizeof(b), FIVC_WAITALL) != sizeof(b))
			return (void *)1;
		if (fivc_chan_write(p->ch, b, sizeof(b), 0) != sizeof(b))
			return (void *)1;
	}
	return NULL;
}

static void test_sleep_and_wake(void)
{
	struct memfab m;
	struct fivc_chan c, s;
	memfab_init(&m, RING);
	memfab_pair(&m, &c, &s);
	c.spin_ns = s.spin_ns = 0; /* always take the doorbell path */
	struct pp p = {&s, 3000};
	pthread_t t;
	CHECK(pthread_create(&t, NULL, echo_thread, &p) == 0);
	uint8_t b[64], o[64];
	for (int i = 0; i < p.n; i++) {
		stream_fill(5, (uint64_t)i * 64, b, 64);
		CHECK_EQ(fivc_chan_write(&c, b, 64, 0), 64);
		CHECK_EQ(fivc_chan_read(&c, o, 64, FIVC_WAITALL), 64);
		CHECK(memcmp(b, o, 64) == 0);
	}
	void *rv;
	pthread_join(t, &rv);
	CHECK(rv == NULL);
	CHECK(c.rx_sleeps + s.rx_sleeps > 0);
	fivc_chan_close(&c);
	fivc_chan_close(&s);
	memfab_free(&m);
}

static void test_slot_lifecycle(void)
{
	struct memfab m;
	struct fivc_chan c, s;
	memfab_init(&m, RING);
	memfab_pair(&m, &c, &s);
	uint32_t idx = c.idx, gen = c.gen;
	CHECK_EQ(fivc_slot_attach(&m.b, idx, gen), -EBUSY);
	CHECK_EQ(fivc_slot_attach(&m.b, idx, gen + 1), -ESTALE);
	fivc_chan_close(&c);
	CHECK((uint32_t)fivc_slot_at(&m.a, idx)->lease != 0); /* server still holds it */
	fivc_chan_close(&s);
	CHECK_EQ((uint32_t)fivc_slot_at(&m.a, idx)->lease, 0);
	/* all slots can be claimed, then the fabric is full */
	uint32_t sl, g;
	for (uint32_t i = 0; i < m.a.g.nslots; i++)
		CHECK_EQ(fivc_slot_claim(&m.a, NULL, i, &sl, &g), 0);
	CHECK_EQ(fivc_slot_claim(&m.a, NULL, 9, &sl, &g), -ENOSPC);
	memfab_free(&m);
}

static void test_offer_registry(void)
{
	struct memfab m;
	memfab_init(&m, RING);
	struct fivc_tuple t = {.sport = 1234, .dport = 80};
	t.saddr[15] = 1;
	t.daddr[15] = 2;
	uint32_t slot, gen, idx, idx2;
	uint64_t word, word2;
	struct fivc_offer_view v;
	CHECK_EQ(fivc_offer_lookup(&m.b, &t, &v), -ENOENT);
	CHECK_EQ(fivc_slot_claim(&m.a, &t, 77, &slot, &gen), 0);
	CHECK_EQ(fivc_offer_post(&m.a, &t, 77, slot, gen, &idx, &word), 0);
	CHECK_EQ(fivc_offer_poll(&m.a, idx, word), FIVC_OFFER_PENDING);
	CHECK_EQ(fivc_offer_remove(&m.a, idx, word), -EBUSY);
	CHECK_EQ(fivc_offer_lookup(&m.b, &t, &v), 0);
	CHECK_EQ(v.slot, slot);
	CHECK_EQ(v.nonce, 77);
	/* a second offer for the same 4-tuple makes it ambiguous: refuse */
	CHECK_EQ(fivc_offer_post(&m.a, &t, 78, slot, gen, &idx2, &word2), 0);
	CHECK_EQ(fivc_offer_lookup(&m.b, &t, &v), -EEXIST);
	CHECK_EQ(fivc_offer_withdraw(&m.a, idx2, word2), 0);
	CHECK_EQ(fivc_offer_remove(&m.a, idx2, word2), 0);
	CHECK_EQ(fivc_offer_lookup(&m.b, &t, &v), 0);
	/* adopt: the slot gets its server side, the client sees ADOPTED */
	CHECK_EQ(fivc_offer_adopt(&m.b, &v), 0);
	CHECK_EQ(fivc_offer_adopt(&m.b, &v), -EBUSY); /* slot already attached */
	CHECK_EQ(fivc_offer_poll(&m.a, idx, word), FIVC_OFFER_ADOPTED);
	CHECK_EQ(fivc_offer_withdraw(&m.a, idx, word), -EALREADY);
	CHECK_EQ(fivc_offer_lookup(&m.b, &t, &v), -ENOENT);
	CHECK_EQ(fivc_offer_remove(&m.a, idx, word), 0);
	CHECK_EQ(fivc_offer_poll(&m.a, idx, word), -ESTALE);
	/* a withdrawn offer can no longer be adopted */
	uint32_t slot2, gen2;
	struct fivc_tuple t2 = t;
	t2.sport = 999;
	CHECK_EQ(fivc_slot_claim(&m.a, &t2, 5, &slot2, &gen2), 0);
	CHECK_EQ(fivc_offer_post(&m.a, &t2, 5, slot2, gen2, &idx, &word), 0);
	CHECK_EQ(fivc_offer_lookup(&m.b, &t2, &v), 0);
	CHECK_EQ(fivc_offer_withdraw(&m.a, idx, word), 0);
	CHECK_EQ(fivc_offer_adopt(&m.b, &v), -ESTALE);
	CHECK_EQ(FIVC_LEASE_SIDE(fivc_slot_at(&m.a, slot2)->lease, 1), 0); /* attach undone */
	memfab_free(&m);
}

/* ---- ring memory that follows the bytes in flight ---- */

#define BIG (1024u * 1024)

/* Read exactly n bytes of stream seed from position pos in odd-sized chunks;
 * with `all`, those were all there was. */
static void read_verify_n(struct fivc_chan *s, uint64_t seed, uint64_t pos, size_t n, int all)
{
	static uint8_t buf[300000];
	size_t got = 0, step = 1;
	while (got < n) {
		size_t want = FIVC_MIN(n - got, step);
		ssize_t r = fivc_chan_read(s, buf, want, FIVC_NONBLOCK);
		CHECK(r > 0);
		CHECK_EQ(stream_verify(seed, pos + got, buf, (size_t)r), (size_t)r);
		got += (size_t)r;
		step = step * 3 + 7;
		if (step > sizeof(buf))
			step = 1;
	}
	if (all)
		CHECK_EQ(fivc_chan_read(s, buf, 1, FIVC_NONBLOCK), -EAGAIN);
}
#define read_verify(s, seed, pos, n) read_verify_n(s, seed, pos, n, 1)

static void test_ring_starts_inline_and_grows_for_a_large_write(void)
{
	struct memfab m;
	struct fivc_chan c, s;
	static uint8_t buf[200000];
	memfab_init(&m, BIG);
	memfab_pair(&m, &c, &s);
	CHECK_EQ(c.txv.buf, FIVC_BUF_INLINE);
	CHECK_EQ(c.txv.size, m.a.g.small_ring);
	stream_fill(7, 0, buf, sizeof(buf));
	/* a reader that is not reading: TCP would buffer it, so do we */
	CHECK_EQ(fivc_chan_write(&c, buf, sizeof(buf), FIVC_NONBLOCK), sizeof(buf));
	CHECK_EQ(FIVC_BUF_CLASS(c.txv.buf), 1); /* straight to big: it needs more than mid */
	CHECK(fivc_chan_tx_grown(&c));
	read_verify(&s, 7, 0, sizeof(buf));
	fivc_chan_close(&c);
	fivc_chan_close(&s);
	for (int k = 0; k < FIVC_POOL_CLASSES; k++)
		for (uint32_t i = 0; i < m.a.g.npool[k]; i++)
			CHECK_EQ(fivc_pool_at(&m.a, k, i)->owner, 0); /* given back at close */
	memfab_free(&m);
}

/* Grow while bytes are still unread in the inline ring, then again while
 * they are unread in mid: the reader crosses each switch point exactly. */
static void test_ring_grows_with_bytes_in_flight(void)
{
	struct memfab m;
	struct fivc_chan c, s;
	static uint8_t buf[BIG];
	memfab_init(&m, BIG);
	memfab_pair(&m, &c, &s);
	stream_fill(9, 0, buf, sizeof(buf));
	CHECK_EQ(fivc_chan_write(&c, buf, 3000, FIVC_NONBLOCK), 3000);
	CHECK_EQ(c.txv.buf, FIVC_BUF_INLINE);
	CHECK_EQ(fivc_chan_write(&c, buf + 3000, 20000, FIVC_NONBLOCK), 20000); /* -> mid at 3000 */
	CHECK_EQ(FIVC_BUF_CLASS(c.txv.buf), 0);
	CHECK_EQ(c.txv.from, 3000);
	/* no second switch while inline bytes are unread: mid fills */
	ssize_t r = fivc_chan_write(&c, buf + 23000, 100000, FIVC_NONBLOCK);
	CHECK_EQ(r, (ssize_t)(m.a.pool_size[0] - 20000));
	CHECK_EQ(FIVC_BUF_CLASS(c.txv.buf), 0);
	uint64_t pos = 23000 + (uint64_t)r;
	read_verify_n(&s, 9, 0, 2000, 0); /* still before `from` */
	CHECK_EQ(fivc_chan_write(&c, buf + pos, 1, FIVC_NONBLOCK), -EAGAIN);
	read_verify_n(&s, 9, 2000, 1500, 0); /* across `from` */
	CHECK_EQ(fivc_chan_write(&c, buf + pos, 300000, FIVC_NONBLOCK), 300000); /* -> big */
	CHECK_EQ(FIVC_BUF_CLASS(c.txv.buf), 1);
	CHECK(c.txv.prev_held); /* mid: still unread */
	read_verify(&s, 9, 3500, (size_t)(pos + 300000 - 3500));
	CHECK_EQ(fivc_chan_writable(&c), BIG);
	CHECK_EQ(fivc_chan_tx_idle(&c), 1); /* (still on big) */
	CHECK(!c.txv.prev_held); /* mid went back: read past */
	fivc_chan_close(&c);
	fivc_chan_close(&s);
	memfab_free(&m);
}

static void test_full_inline_ring_promises_growth_only_while_the_pool_has_buffers(void)
{
	struct memfab m;
	struct fivc_chan c, s;
	static uint8_t buf[8192];
	memfab_init(&m, BIG);
	memfab_pair(&m, &c, &s);
	/* every pool buffer lent to another slot */
	uint32_t other, og, b;
	CHECK_EQ(fivc_slot_claim(&m.a, NULL, 1, &other, &og), 0);
	for (int k = 0; k < FIVC_POOL_CLASSES; k++)
		for (uint32_t i = 0; i < m.a.g.npool[k]; i++)
			CHECK_EQ(fivc_pool_take(&m.a, k, other, og, 0, &b), 0);
	CHECK_EQ(fivc_pool_take(&m.a, 1, other, og, 0, &b), -ENOSPC);
	stream_fill(3, 0, buf, sizeof(buf));
	CHECK_EQ(fivc_chan_write(&c, buf, sizeof(buf), FIVC_NONBLOCK), m.a.g.small_ring);
	/* no false readiness (I7): a full ring that cannot grow is not writable */
	CHECK_EQ(fivc_chan_writable(&c), 0);
	CHECK_EQ(fivc_chan_write(&c, buf, 1, FIVC_NONBLOCK), -EAGAIN);
	read_verify(&s, 3, 0, m.a.g.small_ring);
	fivc_chan_close(&c);
	fivc_chan_close(&s);
	memfab_free(&m);
}

static void test_idle_ring_goes_back_inline_and_frees_its_buffer(void)
{
	struct memfab m;
	struct fivc_chan c, s;
	static uint8_t buf[100000];
	memfab_init(&m, BIG);
	memfab_pair(&m, &c, &s);
	stream_fill(4, 0, buf, sizeof(buf));
	CHECK_EQ(fivc_chan_write(&c, buf, 50000, FIVC_NONBLOCK), 50000);
	uint32_t lent = c.txv.buf;
	CHECK(lent != FIVC_BUF_INLINE);
	CHECK_EQ(fivc_chan_tx_idle(&c), 1); /* written since the last look: not idle */
	CHECK_EQ(fivc_chan_tx_idle(&c), 1); /* bytes in flight: not idle */
	read_verify(&s, 4, 0, 50000);
	CHECK_EQ(fivc_chan_tx_idle(&c), 0); /* empty, and no write a whole period: inline */
	CHECK_EQ(c.txv.buf, FIVC_BUF_INLINE);
	CHECK(!fivc_chan_tx_grown(&c));
	CHECK_EQ(fivc_pool_at(&m.a, FIVC_BUF_CLASS(lent), FIVC_BUF_INDEX(lent))->owner, 0);
	/* and the stream goes on, across the switch back */
	CHECK_EQ(fivc_chan_write(&c, buf + 50000, 1000, FIVC_NONBLOCK), 1000);
	CHECK_EQ(c.txv.buf, FIVC_BUF_INLINE);
	CHECK_EQ(fivc_chan_write(&c, buf + 51000, 49000, FIVC_NONBLOCK), 49000);
	read_verify(&s, 4, 50000, 50000);
	fivc_chan_close(&c);
	fivc_chan_close(&s);
	memfab_free(&m);
}

int main(void)
{
	RUN(test_empty_full_eagain);
	RUN(test_wrap_every_boundary);
	RUN(test_writes_1_to_4x_ring);
	RUN(test_peek_and_waitall);
	RUN(test_eof_after_drain_and_epipe);
	RUN(test_sleep_and_wake);
	RUN(test_slot_lifecycle);
	RUN(test_offer_registry);
	RUN(test_ring_starts_inline_and_grows_for_a_large_write);
	RUN(test_ring_grows_with_bytes_in_flight);
	RUN(test_full_inline_ring_promises_growth_only_while_the_pool_has_buffers);
	RUN(test_idle_ring_goes_back_inline_and_frees_its_buffer);
	return 0;
}
