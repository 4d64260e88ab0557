/* fastivc preload — epoll over managed sockets (I7), in O(ready) (I10).
 *
 * The kernel cannot see ring readiness, so each epoll fd that watches a
 * managed socket gets a registry here (a "set"): per socket, the program's
 * interest and data (an "entry").  The kernel's own set holds every fd of
 * the program: plain fds (listeners, pipes, timerfds, fallen-back sockets)
 * under the program's events and data, which we never look at one by one;
 * managed sockets under a tagged data word (TAG|fd), edge-triggered, so the
 * kernel tells us of each doorbell byte, FIN or RST, and of TCP readiness
 * while a socket is still on TCP.  This is the kernel's eventpoll model
 * (fs/eventpoll.c: ep_poll_callback puts an item on rdllist, epoll_wait
 * walks rdllist only):
 *
 *   - Each set keeps a READY LIST of candidate entries.  An enabled entry is
 *     either on it, or ARMED: its ring's waiting flags are set (rx
 *     cons_waiting for EPOLLIN/EPOLLRDHUP, tx prod_waiting for EPOLLOUT)
 *     with the store-buffering fence, and it was found unreportable after
 *     that fence.  The peer's next ring move then rings the TCP doorbell;
 *     the kernel reports TAG|fd; we drain the byte and put the entry on the
 *     list.  FIN/RST and TCP readiness reach us the same way.
 *   - epoll_wait walks the ready list only.  A reportable entry is reported
 *     and stays on the list (moved to its end, for fairness): LT as the
 *     kernel re-queues LT items; EPOLLET too, but an ET entry is reportable
 *     only if its ring moved (or it saw a kernel edge, or HUP/ERR/RDHUP
 *     appeared) since its last report; EPOLLONESHOT entries are disabled
 *     and leave the list until EPOLL_CTL_MOD.  An entry found unreportable
 *     is, before we sleep, armed (flags, fence, look again) and taken off.
 *     New and modified entries start on the list.
 *   - A list longer than SPIN_MAX_LISTED is pruned that way on every
 *     reporting pass too, not only before a sleep (walk()).
 *   - Spinning (as a blocking read does) walks the list without arming,
 *     bounded in time (adaptive) and only while the list is short; the
 *     kernel is asked with timeout 0 every 16 rounds.  With entries to
 *     report and room left, the kernel is asked (timeout 0) on every call
 *     when the set has plain fds of the program (nplain: the kernel's
 *     epoll_wait reports every ready fd at once), else every 8th call, and
 *     on every call while it had events the last time (then at most
 *     KERNEL_BUSY_BATCH of ours per call, and a quarter of the array kept
 *     for it), so plain fds and armed entries are never starved by a busy
 *     list (report_fair).
 *   - Wake records (layout.h): the set's own sleep arms entries on the ring
 *     with a wake code, so a peer's ring move while the set is awake, or
 *     already rung, sets a bit (collected at every walk) instead of ringing
 *     the TCP doorbell; rec_arm() before sleeping is the SB pairing.
 *   - EPOLL_CTL_DEL of a socket on the ring leaves a ghost (ctl_del).
 *   - A managed socket that turned FS_PLAIN is handed to the kernel: its
 *     registration is modified to the program's events and data, and the
 *     entry goes.  Sockets still on TCP (FS_CLIENT_PENDING, FS_SERVER_PRE)
 *     are watched by the kernel for the program's events; while one is on
 *     the list its TCP readiness is asked with poll(2), and arming it also
 *     arms its ring for reading, so that the peer's first ring write after
 *     the switch wakes us (regression: wrk against nginx stalled when its
 *     epoll_wait began before the server's accept).
 *
 * Lookups are O(1): sets are indexed by epoll fd (sets[], sized like the fd
 * table); a per-fd chain (by_fd[]) links the entries for one fd across sets
 * (usually one), so epoll_ctl and close find them without a search.  Locks:
 * a set's mutex guards its entries and lists; a striped mutex guards the
 * per-fd chains; order set -> stripe.  Sets are never freed (close of an
 * epoll fd empties its set), so a set pointer read from a chain stays
 * valid.  There is no global lock.
 *
 * Why no wake-up is lost:
 *   1. Arm vs. the peer's write (SB): we store "waiting", fence, re-read the
 *      ring; the peer stores its index, fences, reads "waiting".  One of us
 *      sees the other: either our re-check finds the data, or the peer rings.
 *   2. Only the ringer clears "waiting" (channel.c, atomic exchange): no
 *      waiter's clear can wipe another's arm between the peer's look and its
 *      ring.  Several waiters may share a flag (a blocking reader thread, a
 *      poll(), several sets): the one byte is an edge for every kernel
 *      registration of the socket and makes it readable for poll, so all of
 *      them see it.  A waiter that arms after the exchange arms anew.
 *   3. ET: the positions recorded at a report are compared again after the
 *      arming fence, so a move between the report and the arm is seen.
 *   4. Taking an entry off the list happens only after arm, fence and an
 *      unreportable re-check; a kernel event that arrives meanwhile just
 *      queues it again (queueing is idempotent).
 *   5. Kernel registrations are edge-triggered: each doorbell byte is a new
 *      edge even if an older one was not yet drained; we drain to EAGAIN on
 *      every report, so the receive buffer never fills and swallows bytes
 *      (each arm allows one byte per direction).  After a FIN the socket
 *      stays readable, which ET does not report again (no spinning on it).
 *   6. TCP readiness of pending sockets comes from the kernel's ET edges:
 *      data that arrives after our poll(2) found it unready is a new edge.
 *   7. Plain hand-over: the kernel re-polls on EPOLL_CTL_MOD and queues it
 *      if ready; tagged events for it fetched earlier find no entry.
 *   8. Nested sets (an epoll fd in another, or in poll/select): the outer
 *      set's kernel watches the inner epoll fd, which is readable while the
 *      inner kernel set has events (its tagged doorbells included).  Arming
 *      the outer entry arms the inner set's listed entries (an arming pass;
 *      for ET, every listed one), so any ring move there becomes a kernel
 *      event in the inner set, hence an edge for the outer.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fastivc/atomics.h"
#include "fastivc/util.h"
#include "preload.h"

#define TAG 0xf1c0de0000000000ull
#define TAG_MASK 0xffffff0000000000ull
/* The bits EPOLLEXCLUSIVE may come with (the kernel's rule). */
#define EXCLUSIVE_OK (EPOLLIN | EPOLLOUT | EPOLLERR | EPOLLHUP | EPOLLWAKEUP | EPOLLET | EPOLLEXCLUSIVE)
#define SPIN_MAX_LISTED 256 /* a longer list is not spun over: arm and sleep */
#define KERNEL_EVERY 8      /* with entries to report, ask the kernel every Nth call */
/* While the kernel has events too, report at most this many of ours per
 * call: a program that takes one kernel event per call (nginx accepts one
 * connection per listener report) then gets to it every few dozen ring
 * events, not every few hundred.  Measured: nginx's accept queue under a
 * wrk -c1000 burst drained at 350 connections/s with full batches. */
#define KERNEL_BUSY_BATCH 32
#define STRIPES 64
/* Wake records one set may hold: tokens for 65,536 entries (a token is a
 * uint16_t).  A set with more entries arms the rest with the plain
 * doorbell.  Measured: with one record (4,096 tokens), wrk -c10000 armed
 * 5,904 connections with plain doorbells, a TCP segment per response. */
#define REC_MAX 16

struct ep_set;

struct ep_entry {
	int fd;
	int nested;       /* fd is an epoll fd (FIVC_KIND_EPOLL) */
	struct ep_set *set;
	uint32_t events;  /* the program's */
	epoll_data_t data;
	int disabled;     /* EPOLLONESHOT fired */
	int ghost;        /* deleted by the program, kernel registration kept (see ctl_del) */
	int tok1;         /* its token in the set's wake record + 1; 0: none yet */
	int listed;       /* on set->ready */
	int edge;         /* ET: a kernel edge (TCP, nested) or ADD/MOD since the last report */
	uint64_t seen_in, seen_out; /* ET: ring positions (nested: signature) at the last report */
	uint32_t seen_shut;          /* ET: RDHUP/HUP/ERR at the last report */
	uint32_t kmask;   /* what the kernel watches for us now */
	struct ep_entry *rnext, *rprev; /* ready list (set lock) */
	struct ep_entry *anext, *aprev; /* all entries of the set (set lock) */
	struct ep_entry *fnext;         /* entries for this fd in every set (stripe lock) */
};

struct ep_set {
	pthread_mutex_t lock;
	int epfd;
	int nentries;     /* read unlocked (relaxed) by the fast paths */
	int nlisted;
	int nested_et;    /* entries that are epoll fds watched edge-triggered */
	uint32_t gen;     /* bumped when an entry is queued (nested ET signature) */
	struct ep_entry *all;
	struct ep_entry *rhead, *rtail;
	uint8_t spin_fails, spin_probe; /* adaptive spinning, as in channel.c */
	uint8_t kskip, kbusy;
	/* the program's own fds in the kernel's set (listeners, pipes,
	 * fallbacks), counted by epoll_ctl (relaxed; an fd closed without
	 * EPOLL_CTL_DEL stays counted: more kernel calls, never fewer) */
	int nplain;
	/* counters (fastivc_epoll_stats), per set so that no thread writes a
	 * line another set's thread reads: calls (relaxed atomic), the rest
	 * under the lock */
	uint64_t n_calls, n_passes, n_examined, n_max_pass, n_entry_polls, n_absorbed;
	/* its wake records (layout.h), the first taken by the first coded
	 * arm, one more for each FIVC_WAKER_TOKENS entries after that (up to
	 * REC_MAX); valid only in the process that took them (rec_pid: not in
	 * a fork child) */
	struct fivc_fabric *rec_f;
	int nrec;
	uint32_t rec[REC_MAX];
	uint64_t rec_word[REC_MAX];
	pid_t rec_pid;      /* 0: none; -pid: taking one failed in pid */
	int sleepers;       /* threads in the kernel's epoll_wait for this set (atomic) */
	struct ep_entry **tok;  /* by token: tok_cap of them, never fewer than
				   nrec * FIVC_WAKER_TOKENS */
	uint16_t *tok_free;     /* tokens given back */
	int ntok_free, tok_next, tok_cap;
	uint64_t n_rec_queued;  /* entries queued from the records' bits */
};

static struct ep_set **sets;     /* by epoll fd; entries never freed */
static struct ep_entry **by_fd;  /* by watched fd */
/* A TCP socket's registrations made while it was not ours yet (pre_note) */
struct pre_reg {
	struct pre_reg *next;
	int epfd;
	struct epoll_event ev;
};
static struct pre_reg **pre_by_fd; /* by fd, under its stripe */
static uint64_t epoll_late; /* fastivc_epoll_late */
static int ep_nfds;
static pthread_mutex_t stripes[STRIPES];
static pthread_once_t tables_once = PTHREAD_ONCE_INIT;
static __thread int fd_depth;    /* the kernel bounds nesting (5 levels); so do we */


static void tables_init(void)
{
	int n = fivc_nfds;
	struct ep_set **s = calloc((size_t)n, sizeof(*s));
	struct ep_entry **b = calloc((size_t)n, sizeof(*b));
	struct pre_reg **pre = calloc((size_t)n, sizeof(*pre));
	for (int i = 0; i < STRIPES; i++)
		pthread_mutex_init(&stripes[i], NULL);
	if (!s || !b || !pre) {
		free(s);
		free(b);
		free(pre);
		return;
	}
	by_fd = b;
	pre_by_fd = pre;
	ep_nfds = n;
	__atomic_store_n(&sets, s, __ATOMIC_RELEASE); /* publishes by_fd and ep_nfds */
}

static int tables(void)
{
	if (!__atomic_load_n(&sets, __ATOMIC_ACQUIRE))
		pthread_once(&tables_once, tables_init);
	return __atomic_load_n(&sets, __ATOMIC_ACQUIRE) != NULL;
}

static struct ep_set *set_get(int epfd, int create)
{
	struct ep_set **t = __atomic_load_n(&sets, __ATOMIC_ACQUIRE);
	if (!t && create && tables())
		t = __atomic_load_n(&sets, __ATOMIC_ACQUIRE);
	if (!t || epfd < 0 || epfd >= ep_nfds)
		return NULL;
	struct ep_set *s = __atomic_load_n(&t[epfd], __ATOMIC_ACQUIRE);
	if (s || !create)
		return s;
	struct ep_set *n = calloc(1, sizeof(*n));
	if (!n)
		return NULL;
	pthread_mutex_init(&n->lock, NULL);
	n->epfd = epfd;
	if (!__atomic_compare_exchange_n(&t[epfd], &s, n, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
		pthread_mutex_destroy(&n->lock);
		free(n);
		return s;
	}
	return n;
}

static pthread_mutex_t *stripe(int fd) { return &stripes[(unsigned)fd % STRIPES]; }

/* s->lock held: s's entry for fd (it cannot be freed while we hold it). */
static struct ep_entry *lookup(struct ep_set *s, int fd)
{
	if (!by_fd || fd < 0 || fd >= ep_nfds)
		return NULL;
	pthread_mutex_lock(stripe(fd));
	struct ep_entry *e = by_fd[fd];
	while (e && e->set != s)
		e = e->fnext;
	pthread_mutex_unlock(stripe(fd));
	return e;
}

/* ---- the ready list (set lock) ---- */

static void unlist(struct ep_set *s, struct ep_entry *e)
{
	if (!e->listed)
		return;
	*(e->rprev ? &e->rprev->rnext : &s->rhead) = e->rnext;
	*(e->rnext ? &e->rnext->rprev : &s->rtail) = e->rprev;
	e->rnext = e->rprev = NULL;
	e->listed = 0;
	s->nlisted--;
}

static void append(struct ep_set *s, struct ep_entry *e)
{
	e->rnext = NULL;
	e->rprev = s->rtail;
	*(s->rtail ? &s->rtail->rnext : &s->rhead) = e;
	s->rtail = e;
	e->listed = 1;
	s->nlisted++;
}

static void queue(struct ep_set *s, struct ep_entry *e)
{
	if (e->listed || e->disabled || e->ghost)
		return;
	append(s, e);
	s->gen++;
}

/* ---- entries ---- */

static int is_nested_et(const struct ep_entry *e) { return e->nested && (e->events & EPOLLET); }

static int set_nrec(const struct ep_set *s);

static void entry_free(struct ep_set *s, struct ep_entry *e)
{
	if (e->tok1 && s->tok) {
		/* its code leaves the ring's flags with it (fivc_chan_unarm_code) */
		struct fsock *fs = e->nested ? NULL : fivc_fs(e->fd);
		unsigned t = (unsigned)e->tok1 - 1;
		if (fs && fs->ch.f && fs->ch.f == s->rec_f && t / FIVC_WAKER_TOKENS < (unsigned)set_nrec(s))
			fivc_chan_unarm_code(&fs->ch, FIVC_WAKE_CODE(s->rec[t / FIVC_WAKER_TOKENS],
								     t % FIVC_WAKER_TOKENS));
		s->tok[e->tok1 - 1] = NULL;
		s->tok_free[s->ntok_free++] = (uint16_t)(e->tok1 - 1);
	}
	s->nested_et -= is_nested_et(e);
	unlist(s, e);
	*(e->aprev ? &e->aprev->anext : &s->all) = e->anext;
	if (e->anext)
		e->anext->aprev = e->aprev;
	pthread_mutex_lock(stripe(e->fd));
	for (struct ep_entry **pp = &by_fd[e->fd]; *pp; pp = &(*pp)->fnext)
		if (*pp == e) {
			*pp = e->fnext;
			break;
		}
	pthread_mutex_unlock(stripe(e->fd));
	__atomic_sub_fetch(&s->nentries, 1, __ATOMIC_RELAXED);
	free(e);
}

static struct ep_entry *entry_new(struct ep_set *s, int fd, int nested)
{
	struct ep_entry *e = calloc(1, sizeof(*e));
	if (!e)
		return NULL;
	e->fd = fd;
	e->nested = nested;
	e->set = s;
	e->anext = s->all;
	if (s->all)
		s->all->aprev = e;
	s->all = e;
	pthread_mutex_lock(stripe(fd));
	e->fnext = by_fd[fd];
	by_fd[fd] = e;
	pthread_mutex_unlock(stripe(fd));
	__atomic_add_fetch(&s->nentries, 1, __ATOMIC_RELAXED);
	return e;
}

/* The program's (new) interest: reportable again from scratch. */
static void entry_set(struct ep_set *s, struct ep_entry *e, const struct epoll_event *ev)
{
	s->nested_et -= is_nested_et(e);
	e->events = ev->events;
	s->nested_et += is_nested_et(e);
	e->data = ev->data;
	e->disabled = 0;
	e->edge = 1;
	e->seen_in = e->seen_out = UINT64_MAX;
	e->seen_shut = 0;
	queue(s, e);
}

/* What the kernel is to watch for us: on the ring, its doorbells and FIN/RST
 * only; on TCP still, the program's events (and the doorbell, IN). */
static uint32_t kernel_mask(const struct ep_entry *e, const struct fsock *fs)
{
	if (e->nested || !fs || fs->state == FS_ACCEL)
		return EPOLLIN | EPOLLET;
	return (e->events & (EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLPRI)) | EPOLLIN | EPOLLET;
}

/* A managed fd is being closed (or replaced): no set may keep it.  Its
 * kernel registration goes with the socket, unless a duplicate keeps the
 * socket open: then it is removed here. */
static void forget_entries(int fd)
{
	if (!by_fd || fd < 0 || fd >= ep_nfds || !__atomic_load_n(&by_fd[fd], __ATOMIC_RELAXED))
		return;
	struct fsock *fs = fivc_fs(fd);
	int dup = fs && __atomic_load_n(&fs->refs, __ATOMIC_RELAXED) > 1;
	for (;;) {
		pthread_mutex_lock(stripe(fd));
		struct ep_set *s = by_fd[fd] ? by_fd[fd]->set : NULL;
		pthread_mutex_unlock(stripe(fd));
		if (!s)
			return;
		pthread_mutex_lock(&s->lock); /* order: set, then stripe */
		struct ep_entry *e = lookup(s, fd);
		if (e) {
			if (dup)
				fivc_real.epoll_ctl(s->epfd, EPOLL_CTL_DEL, fd, NULL);
			entry_free(s, e);
		}
		pthread_mutex_unlock(&s->lock);
	}
}

void fivc_epoll_forget_fd(int fd) { forget_entries(fd); }

static void hand_to_kernel(struct ep_set *s, struct ep_entry *e);

/* See preload.h: the watcher took fd's socket back to TCP (down.c) while a
 * thread of the program may sleep in one of our sets, whose kernel edges
 * for it were the downgrade's.  Each set's entry goes to the kernel now:
 * EPOLL_CTL_MOD re-polls the socket and wakes a sleeper if it is ready
 * (else the set's sweep does it within FIVC_LIVENESS_MS).  Entries of a
 * ONESHOT that fired, and ghosts, stay for the program's next ctl. */
void fivc_epoll_went_plain(int fd)
{
	if (!by_fd || fd < 0 || fd >= ep_nfds || !__atomic_load_n(&by_fd[fd], __ATOMIC_RELAXED))
		return;
	struct ep_set *done[8];
	int nd = 0;
	while (nd < 8) {
		struct ep_set *s = NULL;
		pthread_mutex_lock(stripe(fd));
		for (struct ep_entry *e = by_fd[fd]; e && !s; e = e->fnext) {
			s = e->set;
			for (int k = 0; k < nd && s; k++)
				if (done[k] == s)
					s = NULL;
		}
		pthread_mutex_unlock(stripe(fd));
		if (!s)
			return;
		done[nd++] = s;
		pthread_mutex_lock(&s->lock); /* order: set, then stripe */
		struct ep_entry *e = lookup(s, fd);
		struct fsock *fs = fivc_fs(fd);
		if (e && !e->nested && !e->ghost && !e->disabled && fs &&
		    __atomic_load_n(&fs->state, __ATOMIC_ACQUIRE) == FS_PLAIN) {
			hand_to_kernel(s, e);
			FIVC_DEBUG("fd %d: back on TCP by the watcher: handed to epoll set %d", fd,
				   s->epfd);
		}
		pthread_mutex_unlock(&s->lock);
	}
}

/* close(epfd): its registry empties (the set itself stays, for reuse), and
 * other sets forget it as a nested entry. */
void fivc_epoll_forget_set(int epfd)
{
	forget_entries(epfd);
	struct ep_set *s = set_get(epfd, 0);
	if (s)
		__atomic_store_n(&s->nplain, 0, __ATOMIC_RELAXED);
	if (!s || (!__atomic_load_n(&s->nentries, __ATOMIC_RELAXED) &&
		   !__atomic_load_n(&s->rec_f, __ATOMIC_RELAXED)))
		return;
	pthread_mutex_lock(&s->lock);
	while (s->all)
		entry_free(s, s->all);
	s->spin_fails = s->spin_probe = s->kskip = 0;
	if (s->rec_f && s->rec_pid == fivc_pid)
		for (int r = 0; r < s->nrec; r++)
			fivc_waker_release(s->rec_f, s->rec[r], s->rec_word[r]);
	s->rec_f = NULL;
	s->rec_pid = 0;
	s->nrec = 0;
	free(s->tok);
	free(s->tok_free);
	s->tok = NULL;
	s->tok_free = NULL;
	s->ntok_free = s->tok_next = s->tok_cap = 0;
	pthread_mutex_unlock(&s->lock);
}

/* ---- epoll_ctl ---- */

static short to_poll(uint32_t ev)
{
	return (short)((ev & EPOLLIN ? POLLIN : 0) | (ev & EPOLLOUT ? POLLOUT : 0) |
		       (ev & EPOLLRDHUP ? POLLRDHUP : 0) | (ev & EPOLLPRI ? POLLPRI : 0));
}

static uint32_t to_epoll(short r)
{
	return (r & POLLIN ? EPOLLIN : 0) | (r & POLLOUT ? EPOLLOUT : 0) |
	       (r & POLLRDHUP ? EPOLLRDHUP : 0) | (r & POLLERR ? EPOLLERR : 0) |
	       (r & POLLHUP ? EPOLLHUP : 0) | (r & POLLPRI ? EPOLLPRI : 0);
}

/* Hand an entry whose socket went plain to the kernel: the program's
 * events and data, then it is the kernel's alone. */
static void hand_to_kernel(struct ep_set *s, struct ep_entry *e)
{
	struct epoll_event kev = {.events = e->events & ~EPOLLEXCLUSIVE, .data = e->data};
	fivc_real.epoll_ctl(s->epfd, EPOLL_CTL_MOD, e->fd, &kev);
	entry_free(s, e);
	__atomic_add_fetch(&s->nplain, 1, __ATOMIC_RELAXED);
}

/* ---- registrations made before the socket was ours ----
 *
 * A TCP socket may be added to a set before connect() makes it ours:
 * nginx adds each upstream connection (EPOLLIN|EPOLLOUT|EPOLLRDHUP|EPOLLET)
 * before its connect (ngx_event_connect_peer).  Such a registration is the
 * kernel's, for TCP's events only, so the ring's never reached the program:
 * nginx sent its request, the server's reply sat in the ring, and nginx
 * waited for ever (regression: `fastivc bench tiers`, every upstream
 * request hung until proxy_read_timeout).  The program's MOD took it over
 * (fivc_do_epoll_ctl), but an edge-triggered loop never sends one.  So the
 * registrations of a TCP socket that is not ours are noted here, and
 * connect() takes each over as that MOD would (fivc_epoll_took_fd).  The
 * notes go with the program's DEL and with close. */
static void pre_note(int epfd, int op, int fd, const struct epoll_event *ev)
{
	if (!pre_by_fd || fd < 0 || fd >= ep_nfds)
		return;
	pthread_mutex_lock(stripe(fd));
	struct pre_reg **pp = &pre_by_fd[fd];
	while (*pp && (*pp)->epfd != epfd)
		pp = &(*pp)->next;
	if (op == EPOLL_CTL_DEL) {
		struct pre_reg *g = *pp;
		if (g) {
			*pp = g->next;
			free(g);
		}
	} else if (*pp) {
		(*pp)->ev = *ev;
	} else {
		/* (a MOD with no note: added before we were loaded) */
		struct pre_reg *g = malloc(sizeof(*g));
		if (g) {
			g->epfd = epfd;
			g->ev = *ev;
			g->next = pre_by_fd[fd];
			__atomic_store_n(&pre_by_fd[fd], g, __ATOMIC_RELEASE);
		}
	}
	pthread_mutex_unlock(stripe(fd));
}

static struct pre_reg *pre_take(int fd)
{
	if (!pre_by_fd || fd < 0 || fd >= ep_nfds || !__atomic_load_n(&pre_by_fd[fd], __ATOMIC_ACQUIRE))
		return NULL;
	pthread_mutex_lock(stripe(fd));
	struct pre_reg *list = pre_by_fd[fd];
	__atomic_store_n(&pre_by_fd[fd], NULL, __ATOMIC_RELAXED);
	pthread_mutex_unlock(stripe(fd));
	return list;
}

void fivc_epoll_forget_pre(int fd)
{
	for (struct pre_reg *g = pre_take(fd), *n; g; g = n) {
		n = g->next;
		free(g);
	}
}

void fivc_epoll_took_fd(int fd)
{
	struct pre_reg *g = pre_take(fd), *n;
	if (!g)
		return;
	int saved = errno;
	for (; g; g = n) {
		n = g->next;
		/* (an EPOLLEXCLUSIVE one cannot be modified: it stays the kernel's;
		 * a set closed since answers EBADF or ENOENT: nothing to take) */
		if (!(g->ev.events & EPOLLEXCLUSIVE) &&
		    fivc_do_epoll_ctl(g->epfd, EPOLL_CTL_MOD, fd, &g->ev) == 0)
			FIVC_DEBUG("fd %d: its registration in epoll set %d, made before connect, "
				   "taken over", fd, g->epfd);
		free(g);
	}
	errno = saved;
}

/* An fd we do not (or no longer) manage: the kernel's, after dropping an
 * entry it may have from when it was managed. */
static int ctl_unmanaged(int epfd, int op, int fd, struct epoll_event *ev)
{
	/* (the set is made for the count: managed entries may come later) */
	struct ep_set *s = set_get(epfd, op == EPOLL_CTL_ADD && fd != epfd);
	if (s && __atomic_load_n(&s->nentries, __ATOMIC_RELAXED)) {
		pthread_mutex_lock(&s->lock);
		struct ep_entry *e = lookup(s, fd);
		int ghost = e && e->ghost;
		if (ghost) /* the program deleted it: the kernel's registration goes too */
			fivc_real.epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL);
		if (e)
			entry_free(s, e);
		pthread_mutex_unlock(&s->lock);
		if (ghost && op != EPOLL_CTL_ADD)
			return (int)fivc_ret(-ENOENT);
	}
	int r = fivc_real.epoll_ctl(epfd, op, fd, ev);
	if (r == 0 && fd != epfd && fivc_fd_kind(fd) == FIVC_KIND_TCP && !fivc_fs(fd))
		pre_note(epfd, op, fd, ev); /* it may become ours (connect) */
	if (r == 0 && s && op == EPOLL_CTL_ADD)
		__atomic_add_fetch(&s->nplain, 1, __ATOMIC_RELAXED);
	else if (r == 0 && s && op == EPOLL_CTL_DEL && __atomic_load_n(&s->nplain, __ATOMIC_RELAXED) > 0)
		__atomic_sub_fetch(&s->nplain, 1, __ATOMIC_RELAXED);
	return r;
}

/* EPOLL_CTL_DEL of a socket on the ring: its kernel registration (tagged,
 * EPOLLIN|EPOLLET, doorbells only) is kept and the entry becomes a ghost,
 * invisible to the program (ENOENT for DEL and MOD, nothing reported), so
 * that a later ADD costs no system call.  Event loops (redis-benchmark, wrk:
 * ae) delete and re-add a connection's fd around every request: four kernel
 * epoll_ctl calls per request, 16% of the client's time at 1,000 clients.
 * A ghost goes with the fd (close), with its set, or once its socket is no
 * longer on the ring (ctl_unmanaged, kernel_take). */
static int ctl_del(struct ep_set *s, struct ep_entry *e, int epfd, int fd, struct fsock *fs)
{
	if (!e)
		return fivc_real.epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL) < 0 ? -errno : 0;
	if (e->ghost)
		return -ENOENT;
	if (!e->nested && fs && fs->state == FS_ACCEL && e->kmask == kernel_mask(e, fs)) {
		s->nested_et -= is_nested_et(e);
		unlist(s, e);
		e->ghost = 1;
		e->events = 0;
		return 0;
	}
	entry_free(s, e);
	return fivc_real.epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL) < 0 ? -errno : 0;
}

enum { EVAL_REPORT = 0, EVAL_PEEK = 1 };
static void entry_arm(struct ep_set *s, struct ep_entry *e, int coded);
static uint32_t entry_eval(struct ep_entry *e, int peek, int *gone);

/* An entry added (or modified) while a thread of the program sleeps in the
 * set's kernel wait: that thread armed the set before the entry came, so
 * nothing would wake it for the entry's ring, and the kernel's own wait
 * wakes a sleeper for a ready fd added from another thread (regression:
 * gunicorn's gthread worker, whose pool threads add each kept-alive
 * connection while its main thread waits, answered every request after
 * the first 100 ms late, at the sleeper's liveness look).  Armed now; if
 * it is ready already, the kernel registration is made to fire at once
 * (EPOLLOUT, edge-triggered, on a socket with send room): the sleeper
 * takes that event, queues the entry and reports it; its next arming puts
 * the registration back (entry_arm).  Set lock held. */
static void ctl_while_asleep(struct ep_set *s, struct ep_entry *e)
{
	int gone;
	struct fsock *fs = fivc_fs(e->fd);
	if (!fs || fs->state == FS_PLAIN || e->disabled)
		return;
	entry_arm(s, e, 0);
	if (!entry_eval(e, EVAL_PEEK, &gone) && !gone)
		return; /* the peer's next move rings (SB: the arm's fence) */
	struct epoll_event kev = {.events = e->kmask | EPOLLOUT | EPOLLET,
				  .data.u64 = TAG | (uint32_t)e->fd};
	if (fivc_real.epoll_ctl(s->epfd, EPOLL_CTL_MOD, e->fd, &kev) == 0)
		e->kmask = kev.events;
}

int fivc_do_epoll_ctl(int epfd, int op, int fd, struct epoll_event *ev)
{
	struct fsock *fs = fivc_fs(fd);
	int nested = !fs && fivc_fd_kind(fd) == FIVC_KIND_EPOLL && fd != epfd;
	if ((!fs || fs->state == FS_PLAIN) && !nested)
		return ctl_unmanaged(epfd, op, fd, ev);
	if (op != EPOLL_CTL_ADD && op != EPOLL_CTL_MOD && op != EPOLL_CTL_DEL)
		return (int)fivc_ret(-EINVAL);
	if (op != EPOLL_CTL_DEL && !ev)
		return (int)fivc_ret(-EFAULT);
	/* EPOLLEXCLUSIVE: the kernel's rules; the flag itself is not passed on
	 * (we modify our registrations), so every set is woken. */
	if (op != EPOLL_CTL_DEL && (ev->events & EPOLLEXCLUSIVE) &&
	    (op == EPOLL_CTL_MOD || nested || (ev->events & ~EXCLUSIVE_OK)))
		return (int)fivc_ret(-EINVAL);
	struct ep_set *s = set_get(epfd, 1);
	if (!s || (nested && op == EPOLL_CTL_ADD && !set_get(fd, 1)))
		return (int)fivc_ret(-ENOMEM);
	struct epoll_event kev = {.events = 0, .data.u64 = TAG | (uint32_t)fd};
	int r = 0;
	pthread_mutex_lock(&s->lock);
	struct ep_entry *e = lookup(s, fd);
	switch (op) {
	case EPOLL_CTL_ADD: {
		if (e && e->ghost) {
			/* its kernel registration is there, for the ring (ctl_del) */
			e->ghost = 0;
			e->nested = 0;
			entry_set(s, e, ev);
			break;
		}
		struct ep_entry probe = {.nested = nested, .events = ev->events};
		kev.events = kernel_mask(&probe, fs);
		if (fivc_real.epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &kev) < 0) {
			r = -errno;
			break;
		}
		/* an entry left from an fd closed behind our back is reused */
		if (!e && !(e = entry_new(s, fd, nested))) {
			fivc_real.epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL);
			r = -ENOMEM;
			break;
		}
		e->nested = nested;
		e->kmask = kev.events;
		entry_set(s, e, ev);
		break;
	}
	case EPOLL_CTL_MOD:
		if (e && e->ghost) {
			r = -ENOENT;
			break;
		}
		if (e && (e->events & EPOLLEXCLUSIVE)) {
			r = -EINVAL;
			break;
		}
		if (!e) {
			/* added before it was managed (before connect): the kernel
			 * has the program's data; take it over */
			struct ep_entry probe = {.nested = nested, .events = ev->events};
			kev.events = kernel_mask(&probe, fs);
			if (fivc_real.epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &kev) < 0) {
				r = -errno;
				break;
			}
			if (!(e = entry_new(s, fd, nested))) {
				r = -ENOMEM;
				break;
			}
			e->kmask = kev.events;
		}
		entry_set(s, e, ev);
		break;
	case EPOLL_CTL_DEL:
		r = ctl_del(s, e, epfd, fd, fs);
		break;
	}
	if (r == 0 && op != EPOLL_CTL_DEL && e && !e->nested &&
	    __atomic_load_n(&s->sleepers, __ATOMIC_ACQUIRE))
		ctl_while_asleep(s, e);
	pthread_mutex_unlock(&s->lock);
	return (int)fivc_ret(r);
}

/* ---- readiness of one entry ---- */

enum { GONE_NO, GONE_CLOSED, GONE_PLAIN };

static uint32_t nested_eval(struct ep_entry *e, int peek);

/* Ring positions an ET entry compares (those of the directions it watches). */
static void positions(const struct ep_entry *e, struct fsock *fs, uint64_t *in, uint64_t *out)
{
	*in = *out = 0;
	if (!fs->ch.f || fs->state == FS_PLAIN)
		return;
	if (e->events & (EPOLLIN | EPOLLRDHUP))
		*in = __atomic_load_n(&fs->ch.rx->tail, __ATOMIC_ACQUIRE);
	if (e->events & EPOLLOUT)
		*out = __atomic_load_n(&fs->ch.tx->head, __ATOMIC_ACQUIRE);
}

/* What to report for one entry now (0: nothing).  peek: only look (no edge
 * consumed), for a set that contains this one, or poll(). */
static uint32_t entry_eval(struct ep_entry *e, int peek, int *gone)
{
	*gone = GONE_NO;
	if (e->disabled)
		return 0;
	if (e->nested)
		return nested_eval(e, peek);
	struct fsock *fs = fivc_fs(e->fd);
	if (!fs) {
		*gone = GONE_CLOSED; /* (closed without close(): exec) */
		return 0;
	}
	if (fs->state == FS_PLAIN) {
		*gone = GONE_PLAIN;
		return 0;
	}
	/* ET: the positions are taken before readiness is.  Taken after, a
	 * byte that came in between moved them without being seen as ready,
	 * and the edge was lost until the liveness nap (regression: an
	 * epoll ET client's first reply after its switch waited 100 ms in
	 * about one connection in five: nginx's upstreams, `bench tiers`). */
	uint64_t in = 0, out = 0;
	if (e->events & EPOLLET)
		positions(e, fs, &in, &out);
	short kev;
	short r = fivc_fs_ready(fs, e->fd, to_poll(e->events), 0, &kev);
	if (fs->state == FS_PLAIN) { /* left the ring just now (down.c) */
		*gone = GONE_PLAIN;
		return 0;
	}
	if (fs->state != FS_ACCEL && fs->state != FS_PLAIN && kev) {
		/* still on TCP for these events: the kernel's answer, now */
		struct pollfd p = {.fd = e->fd, .events = kev};
		e->set->n_entry_polls++;
		if (fivc_real.poll(&p, 1, 0) > 0)
			r |= p.revents & (kev | POLLERR | POLLHUP);
	}
	uint32_t lvl = to_epoll(r) & (e->events | EPOLLERR | EPOLLHUP);
	if (!lvl || !(e->events & EPOLLET))
		return lvl;
	uint32_t shut = lvl & (EPOLLRDHUP | EPOLLHUP | EPOLLERR);
	if (!e->edge && in == e->seen_in && out == e->seen_out && !(shut & ~e->seen_shut))
		return 0; /* ET: nothing new since the last report */
	if (!peek) {
		e->edge = 0;
		e->seen_in = in;
		e->seen_out = out;
		e->seen_shut = shut;
	}
	return lvl;
}

/* ---- the set's wake record (layout.h "wake record"; set lock held) ---- */

/* How many of the set's records are ours: 0 when none yet, or those a
 * parent took before fork. */
static int set_nrec(const struct ep_set *s)
{
	return s->rec_f && s->rec_pid == fivc_pid ? s->nrec : 0;
}

static struct fivc_waker *set_rec(struct ep_set *s, int r)
{
	return fivc_waker_at(s->rec_f, s->rec[r]);
}

/* One more record for tokens from nrec * FIVC_WAKER_TOKENS on (the token
 * table grows with it; a fork child's copy keeps its parent's tokens, whose
 * entries are its own copies); 0 or -1. */
static int rec_add(struct ep_set *s, struct fivc_fabric *f)
{
	int n = (s->nrec + 1) * (int)FIVC_WAKER_TOKENS;
	if (n > s->tok_cap) {
		struct ep_entry **tok = realloc(s->tok, (size_t)n * sizeof(*tok));
		if (!tok)
			return -1;
		s->tok = tok;
		uint16_t *fr = realloc(s->tok_free, (size_t)n * sizeof(*fr));
		if (!fr)
			return -1;
		s->tok_free = fr;
		memset(s->tok + s->tok_cap, 0, (size_t)(n - s->tok_cap) * sizeof(*tok));
		s->tok_cap = n;
	}
	if (fivc_waker_take(f, &s->rec[s->nrec], &s->rec_word[s->nrec]) < 0)
		return -1;
	s->nrec++;
	return 0;
}

/* The records for a set that has none of its own yet: as many as its
 * tokens already given out need (a fork child's entries keep theirs). */
static int recs_take(struct ep_set *s, struct fivc_fabric *f)
{
	int need = (s->tok_next + (int)FIVC_WAKER_TOKENS - 1) / (int)FIVC_WAKER_TOKENS;
	if (need < 1)
		need = 1;
	s->nrec = 0;
	__atomic_store_n(&s->rec_f, NULL, __ATOMIC_RELAXED);
	while (s->nrec < need)
		if (rec_add(s, f) < 0) {
			for (int r = 0; r < s->nrec; r++)
				fivc_waker_release(f, s->rec[r], s->rec_word[r]);
			s->nrec = 0;
			return -1;
		}
	__atomic_store_n(&s->rec_f, f, __ATOMIC_RELAXED);
	s->rec_pid = fivc_pid;
	return 0;
}

/* The value that arms e for this set's own sleep: its wake code, or 1 (the
 * plain doorbell) for a socket not on the ring yet, or without a record or
 * a token to spare. */
static uint32_t entry_code(struct ep_set *s, struct ep_entry *e, struct fsock *fs)
{
	if (fs->state != FS_ACCEL || !fs->ch.f)
		return 1;
	if (s->rec_pid != fivc_pid) {
		if (s->rec_pid == -fivc_pid)
			return 1; /* no record to be had: plain flags until the set empties */
		if (recs_take(s, fs->ch.f) < 0) {
			s->rec_pid = -fivc_pid;
			return 1;
		}
	}
	if (fs->ch.f != s->rec_f)
		return 1;
	if (!e->tok1) {
		int t = -1;
		if (s->ntok_free)
			t = s->tok_free[--s->ntok_free];
		else if (s->tok_next < s->nrec * (int)FIVC_WAKER_TOKENS ||
			 (s->nrec < REC_MAX && rec_add(s, s->rec_f) == 0))
			t = s->tok_next++;
		if (t < 0)
			return 1;
		e->tok1 = t + 1;
		s->tok[t] = e;
	}
	unsigned t = (unsigned)e->tok1 - 1;
	return FIVC_WAKE_CODE(s->rec[t / FIVC_WAKER_TOKENS], t % FIVC_WAKER_TOKENS);
}

static void queue(struct ep_set *s, struct ep_entry *e);

/* Queue the entries whose peers set their bits.  One load when none did. */
static void collect(struct ep_set *s)
{
	for (int k = 0, nrec = set_nrec(s); k < nrec; k++) {
		struct fivc_waker *r = set_rec(s, k);
		if (!fivc_load_relaxed(&r->summary))
			continue;
		uint64_t sum = __atomic_exchange_n(&r->summary, 0, __ATOMIC_ACQUIRE);
		while (sum) {
			unsigned w = (unsigned)__builtin_ctzll(sum);
			sum &= sum - 1;
			uint64_t bits = __atomic_exchange_n(&r->bits[w], 0, __ATOMIC_ACQUIRE);
			while (bits) {
				unsigned t = w * 64 + (unsigned)__builtin_ctzll(bits);
				bits &= bits - 1;
				struct ep_entry *e = s->tok[(size_t)k * FIVC_WAKER_TOKENS + t];
				if (e && !e->listed) {
					queue(s, e);
					s->n_rec_queued++;
				}
			}
		}
	}
}

/* Before the set's waiter sleeps, or is watched from outside: ring moves
 * of coded entries must ring the doorbell now.  1 if bits came meanwhile
 * (SB with fivc_waker_note: store, fence, look). */
static int rec_arm(struct ep_set *s)
{
	int nrec = set_nrec(s), early = 0;
	if (!nrec)
		return 0;
	for (int k = 0; k < nrec; k++)
		fivc_store_relaxed(&set_rec(s, k)->armed, 1);
	fivc_smp_mb();
	for (int k = 0; k < nrec; k++)
		early |= fivc_load_relaxed(&set_rec(s, k)->summary) != 0;
	return early;
}

/* Arm one entry (its peer's next move rings the doorbell, or sets its bit
 * while the set is awake: coded, for the set's own epoll_wait only), keeping
 * the kernel's watch in step with the socket's state. */
static void set_arm(struct ep_set *s, int all);

static void entry_arm(struct ep_set *s, struct ep_entry *e, int coded)
{
	if (e->nested) {
		struct ep_set *in = fd_depth < 5 ? set_get(e->fd, 0) : NULL;
		if (in) {
			fd_depth++;
			pthread_mutex_lock(&in->lock);
			set_arm(in, (e->events & EPOLLET) != 0);
			pthread_mutex_unlock(&in->lock);
			fd_depth--;
		}
		return;
	}
	struct fsock *fs = fivc_fs(e->fd);
	if (!fs || fs->state == FS_PLAIN)
		return;
	uint32_t want = kernel_mask(e, fs);
	if (want != e->kmask) {
		struct epoll_event kev = {.events = want, .data.u64 = TAG | (uint32_t)e->fd};
		if (fivc_real.epoll_ctl(s->epfd, EPOLL_CTL_MOD, e->fd, &kev) == 0)
			e->kmask = want;
	}
	if (!fivc_fs_uses_fabric(fs) || fs->ch.broken)
		return;
	int rd = (e->events & (EPOLLIN | EPOLLRDHUP | EPOLLPRI)) != 0, wr = (e->events & EPOLLOUT) != 0;
	if (fs->state == FS_CLIENT_PENDING)
		wr = 0; /* TCP's space; the ring only for the switch (see the top) */
	fivc_chan_arm_code(&fs->ch, rd, wr, coded ? entry_code(s, e, fs) : 1u);
}

/* ---- walking the ready list (set lock held) ---- */

struct pass {
	struct epoll_event *out;
	int max;
	int arm;       /* arm and drop what is not reportable (we may sleep next) */
	int report;    /* 0: only look (nested, poll) */
	int coded;     /* arm with the set's wake codes (its own epoll_wait) */
};

static int server_pre(const struct ep_entry *e)
{
	struct fsock *fs = e->nested ? NULL : fivc_fs(e->fd);
	return fs && fs->state == FS_SERVER_PRE;
}

/* One pass over the list.  Returns the number reported (or, with report 0,
 * 1 as soon as one is reportable). */
static int walk(struct ep_set *s, struct pass *p)
{
	int n = 0;
	uint32_t seen = 0;
	collect(s);
	/* A long list is pruned on every reporting pass, as the kernel's
	 * ready list is by every epoll_wait (ep_send_events re-queues only the
	 * LT items that had events): an entry found unreportable is armed,
	 * with the set's wake code (while we are awake, its peer's next move
	 * only sets a bit, collected above), and dropped.  Left listed, a busy
	 * set never slept, so never pruned, and walked every entry on every
	 * call: wrk -c10000 against nginx examined all 10,000 on each call,
	 * and while nginx accepted wrk's connections, one per call, its growing
	 * list made the start O(n^2) (3 s without one request done, now and
	 * then).  A short list is left as it was: spinning over it catches a
	 * busy peer's next message without arming. */
	int prune = p->arm || (p->report && s->nlisted > SPIN_MAX_LISTED);
	int coded = p->coded || (prune && p->report);
	struct ep_entry *e = s->rhead, *stop = s->rtail;
	while (e && n < p->max) {
		struct ep_entry *next = e->rnext;
		int last = e == stop, gone;
		seen++;
		uint32_t r = entry_eval(e, p->report ? EVAL_REPORT : EVAL_PEEK, &gone);
		if (!r && !gone && (prune || (p->report && server_pre(e)))) {
			/* (a server socket still reading the client's TCP bytes
			 * costs a poll(2) per look: one found not ready is armed
			 * and dropped at once, as before a sleep; its next TCP edge
			 * or ring move queues it again) */
			entry_arm(s, e, coded);
			/* SB: the arm's fence orders this look after "waiting" */
			r = entry_eval(e, p->report ? EVAL_REPORT : EVAL_PEEK, &gone);
			if (!r && !gone)
				unlist(s, e);
		}
		if (gone && p->report) {
			if (gone == GONE_PLAIN)
				hand_to_kernel(s, e);
			else
				entry_free(s, e);
		} else if (r && !p->report) {
			n = 1;
			break;
		} else if (r) {
			p->out[n].events = r;
			p->out[n].data = e->data;
			n++;
			unlist(s, e);
			if (e->events & EPOLLONESHOT)
				e->disabled = 1;
			else
				append(s, e); /* to the end: the next call starts with the others */
		}
		if (last)
			break;
		e = next;
	}
	s->n_passes++;
	s->n_examined += seen;
	if (seen > s->n_max_pass)
		s->n_max_pass = seen;
	return n;
}

/* Arm a set watched from outside (nested, poll): an arming pass without
 * reporting.  all: an edge-triggered watcher wants a wake-up on any ring
 * move of any entry, as the kernel gives one for every wake-up of an item
 * of the inner set, ready or not; so every entry is armed, and nothing
 * taken off.  That costs O(entries of the inner set), for this rare case
 * only (an unlisted entry may have its doorbell waiting, unread, in the
 * inner kernel set; its flag is then clear and only arming it again makes
 * its next move a new event). */
static void set_arm(struct ep_set *s, int all)
{
	if (all) {
		for (struct ep_entry *e = s->all; e; e = e->anext)
			if (!e->disabled && !e->ghost)
				entry_arm(s, e, 0);
	} else {
		struct pass p = {.max = 1 << 30, .arm = 1, .report = 0};
		/* (report 0 stops at the first reportable: the rest stay listed) */
		walk(s, &p);
	}
	/* entries still coded from the set's own sleep must ring too; the
	 * caller's look that follows collects what came meanwhile */
	rec_arm(s);
}

/* Is anything in s reportable now?  *sig (nested ET only, O(entries), see
 * set_arm): changes when an entry is queued or any entry's ring moves. */
static int set_peek(struct ep_set *s, uint64_t *sig)
{
	struct pass p = {.max = 1, .arm = 0, .report = 0};
	int r = walk(s, &p);
	if (sig) {
		uint64_t g = s->gen;
		for (struct ep_entry *e = s->all; e; e = e->anext) {
			struct fsock *fs = e->nested || e->ghost ? NULL : fivc_fs(e->fd);
			if (fs && fs->state == FS_ACCEL && fs->ch.f)
				g += __atomic_load_n(&fs->ch.rx->tail, __ATOMIC_ACQUIRE) +
				     __atomic_load_n(&fs->ch.tx->head, __ATOMIC_ACQUIRE);
		}
		*sig = g;
	}
	return r;
}

static uint32_t nested_eval(struct ep_entry *e, int peek)
{
	struct ep_set *in = fd_depth < 5 ? set_get(e->fd, 0) : NULL;
	int r = 0;
	uint64_t sig = 0;
	if (in) {
		fd_depth++;
		pthread_mutex_lock(&in->lock);
		r = set_peek(in, (e->events & EPOLLET) ? &sig : NULL);
		pthread_mutex_unlock(&in->lock);
		fd_depth--;
	}
	if (!r) { /* its kernel set: the program's fds there, or doorbells */
		struct pollfd p = {.fd = e->fd, .events = POLLIN};
		e->set->n_entry_polls++;
		r = fivc_real.poll(&p, 1, 0) > 0 && (p.revents & POLLIN);
	}
	if (!r || !(e->events & EPOLLIN))
		return 0;
	if (e->events & EPOLLET) {
		if (sig == e->seen_in && !e->edge)
			return 0;
		if (!peek) {
			e->seen_in = sig;
			e->edge = 0;
		}
	}
	return EPOLLIN;
}

/* ---- epoll_wait ---- */

/* The kernel's events: ours (tagged) queue their entries, after the
 * doorbell is drained; the program's are kept, compacted to the front.
 * Returns how many of the program's, or -errno. */
static int take_events(struct ep_set *s, struct epoll_event *ev, int k);

static int kernel_take(struct ep_set *s, struct epoll_event *ev, int max, int timeout_ms,
		       const sigset_t *mask)
{
	int k = timeout_ms ? fivc_sig_epoll_pwait(s->epfd, ev, max, timeout_ms, mask)
			   : fivc_real.epoll_pwait(s->epfd, ev, max, 0, mask);
	if (k < 0)
		return -errno;
	return take_events(s, ev, k);
}

/* The k events the kernel gave: see kernel_take. */
static int take_events(struct ep_set *s, struct epoll_event *ev, int k)
{
	int out = 0, locked = 0;
	for (int i = 0; i < k; i++) {
		uint64_t d = ev[i].data.u64;
		if ((d & TAG_MASK) != TAG) {
			ev[out++] = ev[i];
			continue;
		}
		if (!locked) {
			pthread_mutex_lock(&s->lock);
			locked = 1;
		}
		int fd = (int)(uint32_t)d;
		struct ep_entry *e = lookup(s, fd);
		struct fsock *fs = e && !e->nested ? fivc_fs(fd) : NULL;
		if (fs && fs->state == FS_ACCEL)
			fivc_fs_drain(fs, fd);
		else if (e && e->ghost) {
			/* off the ring: a ghost's registration would now report TCP */
			fivc_real.epoll_ctl(s->epfd, EPOLL_CTL_DEL, fd, NULL);
			entry_free(s, e);
			e = NULL;
		} else if (e)
			e->edge = 1; /* a TCP (or nested) edge: the program's own */
		if (e && !e->ghost)
			queue(s, e);
		s->n_absorbed++;
	}
	if (locked)
		pthread_mutex_unlock(&s->lock);
	return out;
}

/* A sleeping epoll_wait asks, once per FIVC_LIVENESS_MS, whether the peers
 * of its set's rings are alive, and queues the entries of those that died
 * (and of shared sides that are ready: a wake another holder took):
 * a guest or a process that shares the socket after fork sends no FIN
 * when it dies, so the kernel would never wake us.  O(entries) per
 * period of sleep, never per call and never on a busy set; the liveness
 * of one peer process is asked once per sweep however many connections
 * lead to it (fabric.c dead_recent).  Not counted as passes (I10's
 * counters are about epoll_wait's own walks).  Nested sets are not
 * swept (their own epoll_wait does). */
static void sweep_dead(struct ep_set *s)
{
	pthread_mutex_lock(&s->lock);
	for (struct ep_entry *e = s->all; e; e = e->anext) {
		if (e->nested || e->disabled || e->listed || e->ghost)
			continue;
		struct fsock *fs = fivc_fs(e->fd);
		if (fs && __atomic_load_n(&fs->state, __ATOMIC_ACQUIRE) == FS_PLAIN) {
			/* Gone back to TCP while we slept, by the watcher (an
			 * ask, the peer's poke): the kernel's edges for it were
			 * the downgrade's, taken before it was plain, and none
			 * may come again (regression, the downgrade soak: a
			 * server's epoll slept for ever on a socket at EOF).
			 * The walk hands it to the kernel, which re-polls it. */
			queue(s, e);
			continue;
		}
		if (!fs || !fivc_fs_uses_fabric(fs) ||
		    __atomic_load_n(&fs->ch.peer_gone, __ATOMIC_RELAXED) || fs->ch.broken)
			continue;
		if (fivc_chan_peer_check(&fs->ch))
			queue(s, e);
		/* A side shared after fork: the doorbell byte that wakes every
		 * holder's epoll may be drained by another holder before our
		 * kernel looks, and a code in the ring's flag may be a holder's
		 * that died; either way we sleep armed while the ring is ready.
		 * Arm again (the plain doorbell) and look.  One still before the
		 * switch here may have been switched by another holder, whose
		 * doorbell we never saw: the walk looks (fivc_fs_ready). */
		/* A peer whose FIN came while it stays on the ring (it shut
		 * down writing, before its switch or after) can send no
		 * doorbell, so nothing wakes our kernel for its ring moves
		 * either: look as for a shared side.  (Found by the downgrade
		 * soak, then without any downgrade: a client that wrote all it
		 * had and shut down before its switch, then read a server that
		 * wrote the ring full from epoll: the server slept for ever on
		 * EPOLLOUT; tests/test_eof_before_switch.py.) */
		else if ((fivc_load_relaxed(&fs->ch.shared) || fs->tcp_eof) &&
			 (fs->state != FS_ACCEL ||
			  fivc_chan_arm(&fs->ch, !!(e->events & (EPOLLIN | EPOLLPRI)),
					!!(e->events & EPOLLOUT))))
			queue(s, e);
	}
	pthread_mutex_unlock(&s->lock);
}

static int report(struct ep_set *s, struct epoll_event *ev, int max, int arm)
{
	struct pass p = {.out = ev, .max = max, .arm = arm, .report = 1, .coded = arm};
	pthread_mutex_lock(&s->lock);
	int n = walk(s, &p);
	pthread_mutex_unlock(&s->lock);
	return n;
}

/* We have n of ours to report: the kernel's too (timeout 0), as its own
 * epoll_wait reports every ready fd up to max.  In a set with plain fds of
 * the program that is every call (regression, issue 11: twisted's
 * TCP tests got a connect's completion a loop turn before the listener's
 * readiness, which the kernel reports in the same call, and failed); in a
 * set of ring sockets only, the kernel holds only their doorbells and TCP
 * edges, and is asked now and then, so armed entries are not starved by a
 * busy list. */
static int with_kernel(struct ep_set *s, struct epoll_event *ev, int n, int max,
		       const sigset_t *mask)
{
	if (n >= max || (!s->kbusy && !__atomic_load_n(&s->nplain, __ATOMIC_RELAXED) &&
			 ++s->kskip < KERNEL_EVERY))
		return n;
	s->kskip = 0;
	int k = kernel_take(s, ev + n, max - n, 0, mask);
	/* The kernel had some: ask it again next call.  A listener is level-
	 * triggered and nginx accepts one connection per report; asked every
	 * 8th call only, a busy nginx accepted 400 of wrk's 1,000 connections
	 * in a second and left the rest in the accept queue (wrk timeouts). */
	s->kbusy = k > 0;
	return k > 0 ? n + k : n;
}

/* report(), leaving the kernel its turn: when it is due, a quarter of the
 * program's array stays free for the kernel's events (with an array of one,
 * the kernel is asked first).  A busy ready list filled nginx's 512 every
 * call, and its listener was never reported (the kernel's own list is
 * FIFO: a ready listener gets its turn). */
static int report_fair(struct ep_set *s, struct epoll_event *ev, int max, int arm,
		       const sigset_t *mask)
{
	int due = s->kbusy || s->kskip + 1 >= KERNEL_EVERY;
	if (due && max == 1) {
		s->kskip = 0;
		int k = kernel_take(s, ev, 1, 0, mask);
		s->kbusy = k > 0;
		if (k)
			return k < 0 ? (int)fivc_ret(k) : k;
	}
	int ours = due && max > 1 ? max - (max + 3) / 4 : max;
	if (s->kbusy && ours > KERNEL_BUSY_BATCH)
		ours = KERNEL_BUSY_BATCH;
	int n = report(s, ev, ours, arm);
	return n ? with_kernel(s, ev, n, max, mask) : 0;
}

int fivc_do_epoll_wait(int epfd, struct epoll_event *events, int max, int timeout_ms,
		       const sigset_t *mask)
{
	struct ep_set *s = max > 0 ? set_get(epfd, 0) : NULL;
	if (!s)
		return fivc_real.epoll_pwait(epfd, events, max, timeout_ms, mask);
	if (!__atomic_load_n(&s->nentries, __ATOMIC_RELAXED)) {
		/* Only the kernel's fds: its wait, counted as a sleeper, so that
		 * a managed entry added meanwhile by another thread wakes it
		 * (ctl_while_asleep; regression: gunicorn's gthread main thread,
		 * waiting while a pool thread put its only kept-alive connection
		 * back, slept through the next request until its 1 s timeout).
		 * Events of ours among the kernel's: the managed wait goes on. */
		uint64_t t0 = timeout_ms > 0 ? fivc_now_ns(CLOCK_MONOTONIC) : 0;
		__atomic_add_fetch(&s->sleepers, 1, __ATOMIC_ACQ_REL);
		int k = fivc_real.epoll_pwait(epfd, events, max, timeout_ms, mask);
		int e = errno;
		__atomic_sub_fetch(&s->sleepers, 1, __ATOMIC_ACQ_REL);
		if (k <= 0) {
			errno = e;
			return k;
		}
		int out = take_events(s, events, k);
		if (out)
			return out;
		if (timeout_ms > 0) {
			uint64_t el = (fivc_now_ns(CLOCK_MONOTONIC) - t0) / 1000000;
			timeout_ms = el >= (uint64_t)timeout_ms ? 0 : timeout_ms - (int)el;
		}
	}
	__atomic_add_fetch(&s->n_calls, 1, __ATOMIC_RELAXED);
	fivc_sig_mark();
	uint64_t start = fivc_now_ns(CLOCK_MONOTONIC);
	uint64_t budget = fivc_cfg.spin_ns >> s->spin_fails;
	if (++s->spin_probe >= FIVC_SPIN_PROBE) {
		s->spin_probe = 0;
		budget = fivc_cfg.spin_ns;
	}
	int n = 0;
	if (s->nested_et) {
		/* An epoll fd watched ET: its kernel edges that came before this
		 * report must be taken first, or they would count as new after it. */
		n = kernel_take(s, events, max, 0, mask);
		if (n < 0)
			return (int)fivc_ret(n);
		n += report(s, events + n, max - n, 0);
		if (n || timeout_ms == 0)
			return n;
	}
	n = report_fair(s, events, max, 0, mask);
	if (n)
		return n;
	if (timeout_ms == 0) {
		/* nothing armed: what is listed stays listed for the next call */
		int k = kernel_take(s, events, max, 0, mask);
		if (k < 0)
			return (int)fivc_ret(k);
		return k + report(s, events + k, max - k, 0);
	}
	if (budget && __atomic_load_n(&s->nlisted, __ATOMIC_RELAXED) &&
	    s->nlisted <= SPIN_MAX_LISTED) {
		/* Spin before sleeping, as a blocking read does: a busy peer's next
		 * message usually comes within microseconds, and catching it here
		 * saves its doorbell and our wake-up (measured with nginx + wrk).
		 * Only the listed (recently ready) entries are looked at. */
		for (unsigned i = 1;; i++) {
			n = report_fair(s, events, max, 0, mask);
			if (n) {
				s->spin_fails = budget == fivc_cfg.spin_ns ? 0 : s->spin_fails >> 1;
				return n;
			}
			if (!(i & 15)) {
				int k = kernel_take(s, events, max, 0, mask);
				if (k < 0)
					return (int)fivc_ret(k);
				if (k)
					return k + report(s, events + k, max - k, 0);
				/* (a handler that ran: the sleep below ends at once) */
				if (!s->nlisted || fivc_sig_came() ||
				    fivc_now_ns(CLOCK_MONOTONIC) - start >= budget) {
					uint8_t f = s->spin_fails;
					s->spin_fails = f >= FIVC_SPIN_MAX_SHIFT / 2 ? FIVC_SPIN_MAX_SHIFT
										     : (uint8_t)(f ? f * 2 : 1);
					break;
				}
			}
			fivc_cpu_relax();
		}
	}
	uint64_t checked = start;
	int swept = 0;
	for (;;) {
		n = report_fair(s, events, max, 1, mask); /* arms and drops the rest */
		if (n)
			return n;
		int left = -1;
		if (timeout_ms >= 0) {
			uint64_t el = (fivc_now_ns(CLOCK_MONOTONIC) - start) / 1000000;
			left = el >= (uint64_t)timeout_ms ? 0 : timeout_ms - (int)el;
		}
		/* In slices: no wait rests on a FIN alone (see sweep_dead). */
		int slice = left < 0 || left > (int)FIVC_LIVENESS_MS ? (int)FIVC_LIVENESS_MS : left;
		pthread_mutex_lock(&s->lock); /* (so that a waking thread sees us count) */
		int early = rec_arm(s); /* bits since our walk: look, do not sleep */
		/* an entry queued since the walk (another thread's ctl, a kernel
		 * event it took) was not armed by it: look again first */
		early |= s->nlisted != 0;
		__atomic_add_fetch(&s->sleepers, 1, __ATOMIC_ACQ_REL);
		pthread_mutex_unlock(&s->lock);
		uint64_t absorbed = __atomic_load_n(&s->n_absorbed, __ATOMIC_RELAXED);
		int k = kernel_take(s, events, max, early ? 0 : slice, mask);
		if (!__atomic_sub_fetch(&s->sleepers, 1, __ATOMIC_ACQ_REL)) {
			/* awake: ring moves need not ring until we sleep again */
			pthread_mutex_lock(&s->lock);
			if (!__atomic_load_n(&s->sleepers, __ATOMIC_ACQUIRE))
				for (int r = 0, nrec = set_nrec(s); r < nrec; r++)
					fivc_store_relaxed(&set_rec(s, r)->armed, 0);
			pthread_mutex_unlock(&s->lock);
		}
		if (k < 0)
			return (int)fivc_ret(k);
		n = k + report(s, events + k, max - k, 1);
		if (n && !k && !early && !swept &&
		    __atomic_load_n(&s->n_absorbed, __ATOMIC_RELAXED) == absorbed)
			/* ready after a sleep that no doorbell ended: a lost wake
			 * (or one that came as the slice ran out) */
			__atomic_add_fetch(&epoll_late, (uint64_t)n, __ATOMIC_RELAXED);
		if (n || left == 0)
			return n;
		uint64_t now = fivc_now_ns(CLOCK_MONOTONIC);
		swept = 0;
		if (now - checked >= FIVC_LIVENESS_MS * 1000000ull) {
			checked = now;
			sweep_dead(s);
			swept = 1;
		}
	}
}

/* ---- an epoll fd watched by poll/select ---- */

int fivc_epoll_is_managed(int epfd)
{
	if (fivc_fd_kind(epfd) != FIVC_KIND_EPOLL)
		return 0;
	struct ep_set *s = set_get(epfd, 0);
	return s && __atomic_load_n(&s->nentries, __ATOMIC_RELAXED);
}

short fivc_epoll_fd_ready(int epfd, int arm)
{
	struct ep_set *s = set_get(epfd, 0);
	if (!s || fd_depth > 5)
		return 0;
	fd_depth++;
	pthread_mutex_lock(&s->lock);
	int r = set_peek(s, NULL);
	if (!r && arm) {
		set_arm(s, 0);
		r = set_peek(s, NULL);
	}
	pthread_mutex_unlock(&s->lock);
	fd_depth--;
	return r ? POLLIN : 0;
}

/* Each set that exists, under its lock. */
static void for_each_set(void (*fn)(struct ep_set *s, void *arg), void *arg)
{
	struct ep_set **t = __atomic_load_n(&sets, __ATOMIC_ACQUIRE);
	for (int i = 0; t && i < ep_nfds; i++) {
		struct ep_set *s = __atomic_load_n(&t[i], __ATOMIC_ACQUIRE);
		if (!s)
			continue;
		pthread_mutex_lock(&s->lock);
		fn(s, arg);
		pthread_mutex_unlock(&s->lock);
	}
}

static void stats_add(struct ep_set *s, void *arg)
{
	uint64_t *out = arg;
	out[0] += __atomic_load_n(&s->n_calls, __ATOMIC_RELAXED);
	out[1] += s->n_passes;
	out[2] += s->n_examined;
	out[3] = s->n_max_pass > out[3] ? s->n_max_pass : out[3];
	out[4] += s->n_entry_polls;
	out[5] += s->n_absorbed;
}

static void stats_zero(struct ep_set *s, void *arg)
{
	(void)arg;
	__atomic_store_n(&s->n_calls, 0, __ATOMIC_RELAXED);
	s->n_passes = s->n_examined = s->n_max_pass = s->n_entry_polls = s->n_absorbed = 0;
}

/* Counters of every set since load (or the last reset), for tests and
 * stats; O(fd table), not for the busy path: epoll_wait calls that went
 * through a registry, passes over ready lists, entries looked at, the most
 * in one pass, poll(2) calls made for single entries, tagged kernel events
 * taken. */
FIVC_EXPORT void fastivc_epoll_stats(uint64_t out[6])
{
	memset(out, 0, 6 * sizeof(*out));
	for_each_set(stats_add, out);
}

FIVC_EXPORT void fastivc_epoll_stats_reset(void) { for_each_set(stats_zero, NULL); }

/* Events an epoll_wait reported after a sleep slice that no kernel event
 * (doorbell, TCP edge) ended: each is a wake-up that went missing and was
 * found by the next look, FIVC_LIVENESS_MS late (or, rarely, one that came
 * just as the slice ran out).  For tests (test_epoll_wakes.py). */
FIVC_EXPORT uint64_t fastivc_epoll_late(void) { return __atomic_load_n(&epoll_late, __ATOMIC_RELAXED); }

static void rec_stats_add(struct ep_set *s, void *arg)
{
	uint64_t *out = arg;
	out[0] += s->n_rec_queued;
	out[2] += (uint64_t)set_nrec(s);
}

/* Wake records (layout.h) since load: entries queued from their bits,
 * doorbells not sent because the peer's set was awake or already rung
 * (this process as the ringer), sets that hold a record now. */
FIVC_EXPORT void fastivc_wake_stats(uint64_t out[3])
{
	memset(out, 0, 3 * sizeof(*out));
	for_each_set(rec_stats_add, out);
	out[1] = __atomic_load_n(&fivc_wakes_coalesced, __ATOMIC_RELAXED);
}
