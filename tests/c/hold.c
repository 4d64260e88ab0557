/* Test helper: open a fabric, make one connected channel between this
 * process (client) and a forked child (server), move N bytes each way, post
 * one extra pending offer, print "ready SLOT" and wait until stdin closes
 * (or until killed).  Lets tests inspect a live fabric from outside.
 *
 *   hold FABRIC BYTES_C2S BYTES_S2C */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"

static void xfer(struct fivc_chan *tx_side, struct fivc_chan *rx_side, uint64_t n)
{
	static uint8_t buf[65536];
	uint64_t left = n;
	while (left) {
		size_t k = (size_t)FIVC_MIN(left, (uint64_t)sizeof(buf));
		CHECK_EQ(fivc_chan_write(tx_side, buf, k, 0), k);
		CHECK_EQ(fivc_chan_read(rx_side, buf, k, FIVC_WAITALL), k);
		left -= k;
	}
}

int main(int argc, char **argv)
{
	if (argc < 4)
		return 2;
	struct fivc_fabric f, f2;
	char err[512];
	struct fivc_geometry g = {.nslots = 8, .ring_size = 65536};
	if (fivc_fabric_open(argv[1], &g, &f, err, sizeof(err)) < 0) {
		fprintf(stderr, "%s\n", err);
		return 2;
	}
	struct fivc_tuple t = {.sport = 40000, .dport = 6379};
	t.saddr[10] = t.saddr[11] = 0xff; /* ::ffff:127.0.0.1 */
	t.saddr[12] = 127;
	t.saddr[15] = 1;
	memcpy(t.daddr, t.saddr, 16);
	t.daddr[15] = 2;
	uint32_t slot, gen, idx;
	uint64_t word;
	CHECK(fivc_slot_claim(&f, &t, 99, &slot, &gen) == 0);
	CHECK(fivc_offer_post(&f, &t, 99, slot, gen, &idx, &word) == 0);
	/* the server: a second member in this process (own open file) */
	CHECK(fivc_fabric_open(argv[1], NULL, &f2, err, sizeof(err)) == 0);
	struct fivc_offer_view v;
	CHECK(fivc_offer_lookup(&f2, &t, &v) == 0);
	CHECK(fivc_offer_adopt(&f2, &v) == 0);
	CHECK(fivc_offer_remove(&f, idx, word) == 0);
	struct fivc_chan c, s;
	CHECK(fivc_chan_open(&c, &f, slot, gen, FIVC_SIDE_CLIENT) == 0);
	CHECK(fivc_chan_open(&s, &f2, slot, gen, FIVC_SIDE_SERVER) == 0);
	xfer(&c, &s, strtoull(argv[2], NULL, 0));
	xfer(&s, &c, strtoull(argv[3], NULL, 0));
	/* leave 100 bytes in flight client -> server, and one pending offer */
	static uint8_t junk[100];
	CHECK_EQ(fivc_chan_write(&c, junk, sizeof(junk), 0), 100);
	struct fivc_tuple t2 = t;
	t2.sport = 40001;
	uint32_t slot2, gen2;
	CHECK(fivc_slot_claim(&f, &t2, 7, &slot2, &gen2) == 0);
	CHECK(fivc_offer_post(&f, &t2, 7, slot2, gen2, &idx, &word) == 0);
	printf("ready %u %u\n", slot, slot2);
	fflush(stdout);
	char ch;
	while (read(0, &ch, 1) > 0)
		;
	fivc_chan_close(&c);
	fivc_chan_close(&s);
	fivc_offer_withdraw(&f, idx, word);
	fivc_offer_remove(&f, idx, word);
	fivc_slot_release(&f, slot2, gen2, FIVC_SIDE_CLIENT);
	fivc_fabric_close(&f2);
	fivc_fabric_close(&f);
	printf("closed\n");
	return 0;
}
