/* Fabric behaviour across real processes: simultaneous creation, member
 * locks, and reclamation after kill -9 with the kernel (OFD locks) as the
 * witness.  Uses files under a directory given as argv[1] (default /dev/shm). */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "fastivc/util.h"

static char dir[200] = "/dev/shm";

static void path_for(char *out, size_t n, const char *name)
{
	snprintf(out, n, "%s/fastivc-test-%d-%s", dir, (int)getpid(), name);
}

static int count_tmp_files(const char *prefix)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	int n = 0;
	const char *base = strrchr(prefix, '/') + 1;
	while ((e = readdir(d)))
		if (strncmp(e->d_name, base, strlen(base)) == 0 && strstr(e->d_name, ".tmp"))
			n++;
	closedir(d);
	return n;
}

static void test_simultaneous_create(void)
{
	char path[300];
	path_for(path, sizeof(path), "race");
	for (int round = 0; round < 10; round++) {
		unlink(path);
		int go[2], res[2];
		CHECK(pipe(go) == 0 && pipe(res) == 0);
		enum { N = 16 };
		pid_t kids[N];
		for (int i = 0; i < N; i++) {
			kids[i] = fork();
			CHECK(kids[i] >= 0);
			if (kids[i] == 0) {
				char c;
				close(go[1]);
				if (read(go[0], &c, 1) != 0) /* released by the close below */
					_exit(3);
				struct fivc_fabric f;
				char err[512];
				struct fivc_geometry g = {.nslots = 8, .ring_size = 16384};
				uint64_t out[2] = {0, 0};
				if (fivc_fabric_open(path, &g, &f, err, sizeof(err)) == 0) {
					out[0] = f.epoch;
					out[1] = f.self;
				}
				if (write(res[1], out, sizeof(out)) != sizeof(out))
					_exit(4);
				sleep(1); /* hold the member while the others open */
				_exit(out[0] ? 0 : 1);
			}
		}
		close(go[0]);
		close(go[1]); /* all children start at once */
		uint64_t epoch = 0, selfs[N];
		for (int i = 0; i < N; i++) {
			uint64_t out[2];
			CHECK(read(res[0], out, sizeof(out)) == sizeof(out));
			CHECK(out[0] != 0);
			if (!epoch)
				epoch = out[0];
			CHECK_EQ(out[0], epoch); /* everyone opened the one fabric */
			selfs[i] = out[1];
			CHECK(selfs[i] != 0);
			for (int j = 0; j < i; j++)
				CHECK(selfs[j] != selfs[i]); /* distinct members */
		}
		for (int i = 0; i < N; i++) {
			int st;
			waitpid(kids[i], &st, 0);
			CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
		}
		close(res[0]);
		close(res[1]);
		CHECK_EQ(count_tmp_files(path), 0);
	}
	unlink(path);
}

/* Child: claim a slot, post an offer, report, then wait to be killed. */
static pid_t spawn_offerer(const char *path, uint32_t *slot_out)
{
	int p[2];
	CHECK(pipe(p) == 0);
	pid_t pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		struct fivc_fabric f;
		char err[512];
		uint32_t slot, gen, idx;
		uint64_t word;
		struct fivc_tuple t = {.sport = 4000, .dport = 80};
		uint8_t addr[16] = {0};
		if (fivc_fabric_open(path, NULL, &f, err, sizeof(err)) < 0 ||
		    fivc_slot_claim(&f, &t, 1, &slot, &gen) < 0 ||
		    fivc_offer_post(&f, &t, 1, slot, gen, &idx, &word) < 0 ||
		    fivc_listener_add(&f, addr, 80, 0, &idx, &word) < 0 ||
		    fivc_waker_take(&f, &idx, &word) < 0)
			_exit(1);
		if (write(p[1], &slot, sizeof(slot)) != sizeof(slot))
			_exit(1);
		for (;;)
			pause();
	}
	close(p[1]);
	CHECK(read(p[0], slot_out, sizeof(*slot_out)) == sizeof(*slot_out));
	close(p[0]);
	return pid;
}

static uint32_t slots_in_use(struct fivc_fabric *f)
{
	uint32_t n = 0;
	for (uint32_t i = 0; i < f->g.nslots; i++)
		n += (uint32_t)fivc_load_relaxed(&fivc_slot_at(f, i)->lease) != 0;
	return n;
}

static uint32_t offers_in_use(struct fivc_fabric *f)
{
	uint32_t n = 0;
	for (uint32_t i = 0; i < f->g.noffers; i++)
		n += FIVC_OFFER_STATE(fivc_load_relaxed(&fivc_offer_at(f, i)->state)) != FIVC_OFFER_FREE;
	return n;
}

static uint32_t owned_in_use(struct fivc_fabric *f, int wakers)
{
	uint32_t n = 0;
	for (uint32_t i = 0; i < (wakers ? FIVC_WAKERS : FIVC_LISTENERS); i++)
		n += FIVC_OFFER_STATE(fivc_load_relaxed(wakers ? &fivc_waker_at(f, i)->state
								: &fivc_listener_at(f, i)->state)) != 0;
	return n;
}

static void test_kill9_offer_and_slot_reclaimed(void)
{
	char path[300], err[512];
	path_for(path, sizeof(path), "kill");
	unlink(path);
	struct fivc_fabric f;
	struct fivc_geometry g = {.nslots = 8, .ring_size = 16384};
	CHECK(fivc_fabric_open(path, &g, &f, err, sizeof(err)) == 0);
	uint32_t slot;
	pid_t pid = spawn_offerer(path, &slot);
	struct fivc_gc_report r;
	CHECK_EQ(fivc_gc(&f, &r), 0);
	CHECK_EQ(r.offers_freed + r.slots_freed, 0); /* alive: nothing to reclaim */
	CHECK_EQ(slots_in_use(&f), 1);
	CHECK_EQ(offers_in_use(&f), 1);
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	CHECK_EQ(fivc_gc(&f, &r), 0);
	CHECK_EQ(r.members_dead, 1);
	CHECK_EQ(r.offers_freed, 1);
	CHECK_EQ(r.slots_freed, 1);
	CHECK_EQ(slots_in_use(&f), 0);
	CHECK_EQ(offers_in_use(&f), 0);
	fivc_fabric_close(&f);
	unlink(path);
}

/* Child = client side writing forever; parent = server reading. */
static void test_kill9_mid_transfer(int kill_writer)
{
	char path[300], err[512];
	path_for(path, sizeof(path), "mid");
	unlink(path);
	struct fivc_fabric f;
	struct fivc_geometry g = {.nslots = 4, .ring_size = 65536};
	CHECK(fivc_fabric_open(path, &g, &f, err, sizeof(err)) == 0);
	int p[2];
	CHECK(pipe(p) == 0);
	pid_t pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		struct fivc_fabric cf;
		struct fivc_chan c;
		uint32_t slot, gen;
		static uint8_t buf[100000];
		if (fivc_fabric_open(path, NULL, &cf, err, sizeof(err)) < 0 ||
		    fivc_slot_claim(&cf, NULL, 1, &slot, &gen) < 0 ||
		    fivc_chan_open(&c, &cf, slot, gen, FIVC_SIDE_CLIENT) < 0)
			_exit(1);
		uint32_t msg[2] = {slot, gen};
		if (write(p[1], msg, sizeof(msg)) != sizeof(msg))
			_exit(1);
		if (kill_writer)
			for (;;)
				fivc_chan_write(&c, buf, sizeof(buf), 0);
		for (;;)
			fivc_chan_read(&c, buf, sizeof(buf), 0); /* reader side dies */
	}
	uint32_t msg[2];
	CHECK(read(p[0], msg, sizeof(msg)) == sizeof(msg));
	struct fivc_chan s;
	CHECK_EQ(fivc_slot_attach(&f, msg[0], msg[1]), 0);
	CHECK_EQ(fivc_chan_open(&s, &f, msg[0], msg[1], FIVC_SIDE_SERVER), 0);
	static uint8_t buf[100000];
	ssize_t r;
	if (kill_writer) {
		CHECK(fivc_chan_read(&s, buf, sizeof(buf), FIVC_WAITALL) == sizeof(buf));
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		uint64_t t0 = fivc_now_ns(CLOCK_MONOTONIC);
		while ((r = fivc_chan_read(&s, buf, sizeof(buf), 0)) > 0)
			; /* drain what it wrote before dying */
		CHECK(r == 0 || r == -ECONNRESET);
		CHECK(fivc_now_ns(CLOCK_MONOTONIC) - t0 < 3000000000ull);
	} else {
		CHECK(fivc_chan_write(&s, buf, sizeof(buf), 0) == sizeof(buf));
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		uint64_t t0 = fivc_now_ns(CLOCK_MONOTONIC);
		while ((r = fivc_chan_write(&s, buf, sizeof(buf), 0)) > 0)
			; /* fill the ring; then the dead reader must be noticed */
		CHECK(r == -EPIPE || r == -ECONNRESET);
		CHECK(fivc_now_ns(CLOCK_MONOTONIC) - t0 < 3000000000ull);
	}
	fivc_chan_close(&s);
	CHECK_EQ(slots_in_use(&f), 0); /* close reaped the dead side too */
	fivc_fabric_close(&f);
	close(p[0]);
	close(p[1]);
	unlink(path);
}

static void test_kill9_writer(void) { test_kill9_mid_transfer(1); }
static void test_kill9_reader(void) { test_kill9_mid_transfer(0); }

static void test_dead_member_id_reused_sweeps(void)
{
	/* A process that takes over a dead member's id first clears what the
	 * dead one left.  Fill every member id but one with live holders so
	 * the newcomer must get the dead one's. */
	char path[300], err[512];
	path_for(path, sizeof(path), "reuse");
	unlink(path);
	struct fivc_fabric f;
	struct fivc_geometry g = {.nslots = 4, .nmembers = 2, .ring_size = 16384};
	CHECK(fivc_fabric_open(path, &g, &f, err, sizeof(err)) == 0);
	uint32_t slot;
	pid_t pid = spawn_offerer(path, &slot);
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	CHECK_EQ(slots_in_use(&f), 1);
	CHECK_EQ(owned_in_use(&f, 0), 1);
	CHECK_EQ(owned_in_use(&f, 1), 1);
	struct fivc_fabric f2; /* a second open file description: a new member */
	CHECK(fivc_fabric_open(path, NULL, &f2, err, sizeof(err)) == 0);
	CHECK(f2.self != 0 && f2.self != f.self);
	/* every table the dead one used was swept (its `touched` bits) */
	CHECK_EQ(slots_in_use(&f), 0);
	CHECK_EQ(offers_in_use(&f), 0);
	CHECK_EQ(owned_in_use(&f, 0), 0);
	CHECK_EQ(owned_in_use(&f, 1), 0);
	CHECK_EQ(fivc_member_at(&f, f2.self - 1)->touched, 0);
	/* and now all ids are taken: a third member cannot claim, only read */
	struct fivc_fabric f3;
	CHECK(fivc_fabric_open(path, NULL, &f3, err, sizeof(err)) == 0);
	CHECK_EQ(f3.self, 0);
	uint32_t s3, g3;
	CHECK_EQ(fivc_slot_claim(&f3, NULL, 1, &s3, &g3), -EUSERS);
	fivc_fabric_close(&f3);
	fivc_fabric_close(&f2);
	fivc_fabric_close(&f);
	unlink(path);
}

/* A fresh 8-slot fabric at path (named after `name`), joined by two host
 * members and by a guest member through a mapping of the file. */
static void two_hosts_and_a_guest(char *path, size_t len, const char *name,
				  struct fivc_fabric *host, struct fivc_fabric *host2,
				  struct fivc_fabric *guest)
{
	char err[512];
	path_for(path, len, name);
	unlink(path);
	struct fivc_geometry g = {.nslots = 8, .ring_size = 16384};
	CHECK(fivc_fabric_open(path, &g, host, err, sizeof(err)) == 0);
	CHECK(fivc_fabric_open(path, NULL, host2, err, sizeof(err)) == 0);
	void *map = mmap(NULL, host->size, PROT_READ | PROT_WRITE, MAP_SHARED, host->fd, 0);
	CHECK(map != MAP_FAILED);
	CHECK(fivc_fabric_attach_guest(map, host->size, guest, err, sizeof(err)) == 0);
}

/* The guest connects to the host: a slot, both channel ends. */
static void guest_connects(struct fivc_fabric *guest, struct fivc_fabric *host, struct fivc_chan *gc,
			   struct fivc_chan *hs, uint32_t *slot, uint32_t *gen)
{
	CHECK_EQ(fivc_slot_claim(guest, NULL, 7, slot, gen), 0);
	CHECK_EQ(fivc_slot_attach(host, *slot, *gen), 0);
	CHECK_EQ(fivc_chan_open(gc, guest, *slot, *gen, FIVC_SIDE_CLIENT), 0);
	CHECK_EQ(fivc_chan_open(hs, host, *slot, *gen, FIVC_SIDE_SERVER), 0);
}

/* Leases (issue 13): a guest paused past its heartbeat window is judged
 * dead, its side reclaimed and its slot reused by another connection.  On
 * resume its old channel must give ECONNRESET to reads, writes and
 * shutdown, and leave the new connection's bytes and flags as they were;
 * its next beat joins it again under a new id. */
static void test_paused_guest_cannot_write_into_reused_slot(void)
{
	char path[300];
	struct fivc_fabric host, host2, guest;
	two_hosts_and_a_guest(path, sizeof(path), "lease", &host, &host2, &guest);
	uint32_t gid = guest.self;
	CHECK(gid != 0 && gid != host.self && gid != host2.self);
	/* the guest connects to the host, and they talk */
	uint32_t slot, gen;
	struct fivc_chan gc, hs;
	guest_connects(&guest, &host, &gc, &hs, &slot, &gen);
	char buf[64];
	CHECK_EQ(fivc_chan_write(&gc, "hello", 5, 0), 5);
	CHECK_EQ(fivc_chan_read(&hs, buf, sizeof(buf), 0), 5);
	CHECK_EQ(fivc_chan_write(&hs, "reply", 5, 0), 5);
	/* the guest pauses: no beat for longer than the window */
	CHECK(fivc_member_alive(&host, gid));
	usleep((FIVC_HEARTBEAT_DEAD_MS + 200) * 1000);
	CHECK(!fivc_member_alive(&host, gid));
	struct fivc_gc_report r;
	CHECK_EQ(fivc_gc(&host, &r), 0);
	CHECK_EQ(r.slot_sides_freed, 1);
	/* the host sees the reset and closes: the slot is free, and the next
	 * connection (host2 to host) takes it */
	CHECK_EQ(fivc_chan_read(&hs, buf, sizeof(buf), FIVC_NONBLOCK), 0); /* EOF */
	fivc_chan_close(&hs);
	uint32_t slot2, gen2;
	struct fivc_chan c2, s2;
	CHECK_EQ(fivc_slot_claim(&host2, NULL, 8, &slot2, &gen2), 0);
	CHECK_EQ(slot2, slot);
	CHECK(gen2 != gen);
	CHECK_EQ(fivc_slot_attach(&host, slot2, gen2), 0);
	CHECK_EQ(fivc_chan_open(&c2, &host2, slot2, gen2, FIVC_SIDE_CLIENT), 0);
	CHECK_EQ(fivc_chan_open(&s2, &host, slot2, gen2, FIVC_SIDE_SERVER), 0);
	CHECK_EQ(fivc_chan_write(&c2, "new connection", 14, 0), 14);
	CHECK_EQ(fivc_chan_write(&s2, "its reply", 9, 0), 9);
	struct fivc_slot *sl = fivc_slot_at(&host, slot);
	uint64_t tails[2] = {sl->ring[0].tail, sl->ring[1].tail};
	uint64_t heads[2] = {sl->ring[0].head, sl->ring[1].head};
	/* the guest resumes, with its old channel */
	CHECK_EQ(fivc_chan_write(&gc, "EVIL", 4, FIVC_NONBLOCK), -ECONNRESET);
	CHECK_EQ(fivc_chan_read(&gc, buf, sizeof(buf), FIVC_NONBLOCK), -ECONNRESET);
	CHECK_EQ(fivc_chan_write(&gc, "EVIL", 4, 0), -ECONNRESET);
	CHECK_EQ(fivc_chan_peer_check(&gc), 1);
	fivc_chan_close(&gc);
	for (int d = 0; d < 2; d++) {
		CHECK_EQ(sl->ring[d].tail, tails[d]);
		CHECK_EQ(sl->ring[d].head, heads[d]);
		CHECK_EQ(sl->ring[d].wr_closed, 0);
		CHECK_EQ(sl->ring[d].rd_closed, 0);
	}
	CHECK_EQ(FIVC_LEASE_WORD(gen2, host.self, host2.self), sl->lease);
	/* the new connection's bytes are intact */
	memset(buf, 0, sizeof(buf));
	CHECK_EQ(fivc_chan_read(&s2, buf, sizeof(buf), 0), 14);
	CHECK(!memcmp(buf, "new connection", 14));
	CHECK_EQ(fivc_chan_read(&c2, buf, sizeof(buf), 0), 9);
	CHECK(!memcmp(buf, "its reply", 9));
	/* its next beat finds the id gone (gc freed it) and joins again */
	CHECK_EQ(fivc_gc(&host, &r), 0);
	CHECK_EQ(fivc_member_beat(&guest), 1);
	CHECK(guest.self != 0);
	CHECK_EQ(fivc_member_beat(&guest), 0);
	CHECK(fivc_member_alive(&host, guest.self));
	fivc_chan_close(&c2);
	fivc_chan_close(&s2);
	fivc_fabric_close(&guest);
	fivc_fabric_close(&host2);
	fivc_fabric_close(&host);
	unlink(path);
}

/* Quarantine (issue 13): a guest judged dead while one of its threads was
 * inside the slot (past the lease check that let it store there, in the
 * middle of a chunk's copy) may finish that store when it resumes.  Its
 * side must stay out of use until it has left: the slot is not given to
 * the next connection, and the guest's leaving lifts the quarantine.  A
 * guest that never comes back (a killed VM) is lifted after
 * FIVC_QUARANTINE_MAX_S, or by gc with FIVC_GC_LIFT_QUARANTINE. */
static void test_guest_inside_slot_is_quarantined(void)
{
	char path[300];
	struct fivc_fabric host, host2, guest;
	two_hosts_and_a_guest(path, sizeof(path), "quarantine", &host, &host2, &guest);
	struct fivc_gc_report r;
	char buf[64];
	for (int round = 0; round < 3; round++) {
		/* round 0: the guest leaves; 1: it never does, the quarantine
		 * ages out; 2: gc is told to lift it */
		uint32_t slot, gen;
		struct fivc_chan gc, hs;
		guest_connects(&guest, &host, &gc, &hs, &slot, &gen);
		CHECK_EQ(fivc_chan_write(&gc, "hello", 5, 0), 5);
		CHECK_EQ(fivc_chan_read(&hs, buf, sizeof(buf), 0), 5);
		struct fivc_slot *sl = fivc_slot_at(&host, slot);
		CHECK_EQ(FIVC_BUSY_WORD_N(sl->busy[0]), 0u); /* (nobody inside between calls) */
		/* a writer of the guest is inside the slot, and the guest pauses */
		CHECK_EQ(fivc_chan_enter(&gc), 1);
		CHECK_EQ(FIVC_BUSY_WORD_N(sl->busy[0]), 1u);
		CHECK(fivc_member_alive(&host, guest.self)); /* (the first look at its beat) */
		usleep((FIVC_HEARTBEAT_DEAD_MS + 200) * 1000);
		CHECK(!fivc_member_alive(&host, guest.self));
		CHECK_EQ(fivc_gc(&host, &r), 0);
		CHECK_EQ(r.slot_sides_freed, 1);
		CHECK_EQ(r.slots_quarantined, 1);
		CHECK_EQ(FIVC_LEASE_SIDE(sl->lease, 0), FIVC_LEASE_QUARANTINE);
		/* the host sees the reset and closes: the slot is not free */
		CHECK_EQ(fivc_chan_read(&hs, buf, sizeof(buf), FIVC_NONBLOCK), 0); /* EOF */
		fivc_chan_close(&hs);
		CHECK_EQ(sl->lease, FIVC_LEASE_WORD(gen, 0, FIVC_LEASE_QUARANTINE));
		CHECK_EQ(fivc_gc(&host, &r), 0);
		CHECK_EQ(r.slots_quarantined, 1);
		CHECK_EQ(r.slots_freed, 0);
		/* the next connections take other slots, all seven of them */
		uint32_t other[8], og;
		for (int k = 0; k < 7; k++) {
			CHECK_EQ(fivc_slot_claim(&host2, NULL, 8, &other[k], &og), 0);
			CHECK(other[k] != slot);
		}
		CHECK_EQ(fivc_slot_claim(&host2, NULL, 8, &other[7], &og), -ENOSPC);
		for (int k = 0; k < 7; k++)
			fivc_slot_release(&host2, other[k], FIVC_LEASE_GEN(fivc_slot_at(&host2, other[k])->lease),
					  FIVC_SIDE_CLIENT);
		/* another thread of the paused guest enters after the mark: it
		 * is refused and does not count */
		CHECK_EQ(fivc_chan_enter(&gc), 0);
		CHECK_EQ(FIVC_BUSY_WORD_N(sl->busy[0]), 1u);
		if (round == 0) {
			/* the guest resumes, finishes its store, leaves: lifted */
			fivc_chan_leave(&gc);
			CHECK_EQ((uint32_t)sl->lease, 0u);
		} else if (round == 1) {
			sl->quarantine_s -= FIVC_QUARANTINE_MAX_S + 1; /* (time passes) */
			CHECK_EQ(fivc_gc(&host, &r), 0);
			CHECK_EQ(r.quarantines_lifted, 1);
			CHECK_EQ(r.slots_freed, 1);
			CHECK_EQ((uint32_t)sl->lease, 0u);
		} else {
			CHECK_EQ(fivc_gc_flags(&host, &r, FIVC_GC_LIFT_QUARANTINE), 0);
			CHECK_EQ(r.quarantines_lifted, 1);
			CHECK_EQ((uint32_t)sl->lease, 0u);
		}
		CHECK_EQ(fivc_gc(&host, &r), 0);
		CHECK_EQ(r.slots_quarantined, 0);
		/* its old channel gets an error (the host's close came first:
		 * EPIPE, as TCP after a FIN may give) and stores nothing */
		ssize_t e = fivc_chan_write(&gc, "EVIL", 4, FIVC_NONBLOCK);
		CHECK(e == -ECONNRESET || e == -EPIPE);
		fivc_chan_leave(&gc); /* (a late leave after a lift: no effect) */
		fivc_chan_close(&gc);
		CHECK_EQ((uint32_t)sl->lease, 0u);
		/* the guest beats again: a new id */
		CHECK_EQ(fivc_member_beat(&guest), 1);
		CHECK(guest.self != 0);
	}
	fivc_fabric_close(&guest);
	fivc_fabric_close(&host2);
	fivc_fabric_close(&host);
	unlink(path);
}

int main(int argc, char **argv)
{
	if (argc > 1)
		snprintf(dir, sizeof(dir), "%s", argv[1]);
	RUN(test_simultaneous_create);
	RUN(test_kill9_offer_and_slot_reclaimed);
	RUN(test_kill9_writer);
	RUN(test_kill9_reader);
	RUN(test_dead_member_id_reused_sweeps);
	RUN(test_paused_guest_cannot_write_into_reused_slot);
	RUN(test_guest_inside_slot_is_quarantined);
	return 0;
}
