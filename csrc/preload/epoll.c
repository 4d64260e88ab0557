/* fastivc preload — epoll over managed sockets (I7).
 *
 * The kernel cannot see ring readiness, so each epoll fd that watches a
 * managed socket gets a registry here: the program's interest and data per
 * socket.  The kernel watches that socket's TCP fd for EPOLLIN only (the
 * doorbell, FIN/RST), under a tagged data word; epoll_wait() reports ring
 * readiness with the program's data, and passes every other event through.
 *
 * Semantics: level-triggered by default; EPOLLET reports a socket again only
 * after its ring moved (new data in, or space freed) since the last report;
 * EPOLLONESHOT disables the entry after one report until EPOLL_CTL_MOD.
 * Sockets still on TCP (pending client, server before N) take the kernel's
 * answer for the TCP fd, asked with a zero-timeout poll.
 *
 * Nested sets: an epoll fd inside another (or watched by poll/select) is an
 * entry like a socket.  It is ready when one of its own entries is (looked
 * at without consuming an edge or a one-shot) or when the kernel says so for
 * its other fds; the kernel watches it for the doorbells of its sockets,
 * which are armed through it.  Edge-triggered: reported again when one of
 * its rings moved or the kernel saw a new edge.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fastivc/atomics.h"
#include "fastivc/util.h"
#include "preload.h"

#define TAG 0xf1c0de0000000000ull
#define TAG_MASK 0xffffff0000000000ull

struct ep_entry {
	int fd;
	int nested;      /* fd is an epoll fd (FIVC_KIND_EPOLL) */
	int kwoke;       /* nested, ET: the kernel reported an edge for it */
	uint32_t events; /* the program's */
	epoll_data_t data;
	int disabled;    /* EPOLLONESHOT fired */
	uint64_t seen_in, seen_out; /* ring positions at the last ET report */
	uint32_t kmask;  /* what the kernel watches on the TCP fd now */
	struct ep_entry *next;
};

struct ep_set {
	int epfd;
	pthread_mutex_t lock;
	struct ep_entry *head;
	struct ep_set *next;
	uint8_t spin_fails, spin_probe; /* adaptive spinning, as in channel.c */
};

static struct ep_set *sets;
static pthread_mutex_t sets_lock = PTHREAD_MUTEX_INITIALIZER;
static int nsets;

static struct ep_set *set_for(int epfd, int create)
{
	pthread_mutex_lock(&sets_lock);
	struct ep_set *s = sets;
	while (s && s->epfd != epfd)
		s = s->next;
	if (!s && create && (s = calloc(1, sizeof(*s)))) {
		s->epfd = epfd;
		pthread_mutex_init(&s->lock, NULL);
		s->next = sets;
		sets = s;
		__atomic_add_fetch(&nsets, 1, __ATOMIC_RELAXED);
	}
	pthread_mutex_unlock(&sets_lock);
	return s;
}

static struct ep_entry *entry_of(struct ep_set *s, int fd)
{
	struct ep_entry *e = s->head;
	while (e && e->fd != fd)
		e = e->next;
	return e;
}

static void entry_remove(struct ep_set *s, int fd)
{
	for (struct ep_entry **pp = &s->head; *pp; pp = &(*pp)->next)
		if ((*pp)->fd == fd) {
			struct ep_entry *e = *pp;
			*pp = e->next;
			free(e);
			return;
		}
}

/* A managed fd is being closed: no set may keep it (the kernel forgets it
 * with the last fd of the socket; we must not read its freed fsock). */
void fivc_epoll_forget_fd(int fd)
{
	if (!__atomic_load_n(&nsets, __ATOMIC_RELAXED))
		return;
	pthread_mutex_lock(&sets_lock);
	for (struct ep_set *s = sets; s; s = s->next) {
		pthread_mutex_lock(&s->lock);
		entry_remove(s, fd);
		pthread_mutex_unlock(&s->lock);
	}
	pthread_mutex_unlock(&sets_lock);
}

/* close(epfd): drop its registry. */
void fivc_epoll_forget_set(int epfd)
{
	if (!__atomic_load_n(&nsets, __ATOMIC_RELAXED))
		return;
	pthread_mutex_lock(&sets_lock);
	for (struct ep_set **pp = &sets; *pp; pp = &(*pp)->next)
		if ((*pp)->epfd == epfd) {
			struct ep_set *s = *pp;
			*pp = s->next;
			while (s->head)
				entry_remove(s, s->head->fd);
			pthread_mutex_destroy(&s->lock);
			free(s);
			__atomic_sub_fetch(&nsets, 1, __ATOMIC_RELAXED);
			break;
		}
	pthread_mutex_unlock(&sets_lock);
}

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

int fivc_do_epoll_ctl(int epfd, int op, int fd, struct epoll_event *ev)
{
	struct fsock *fs = fivc_fs(fd);
	int nested = !fs && fivc_fd_kind(fd) == FIVC_KIND_EPOLL && fd != epfd;
	struct ep_set *s = set_for(epfd, (fs || nested) && op == EPOLL_CTL_ADD);
	if (nested && op == EPOLL_CTL_ADD && !set_for(fd, 1))
		return (int)fivc_ret(-ENOMEM);
	if (!fs && !nested) {
		if (s && op == EPOLL_CTL_DEL) {
			pthread_mutex_lock(&s->lock);
			entry_remove(s, fd); /* it may have been managed when added */
			pthread_mutex_unlock(&s->lock);
		}
		return fivc_real.epoll_ctl(epfd, op, fd, ev);
	}
	if (!s)
		return op == EPOLL_CTL_ADD ? (int)fivc_ret(-ENOMEM) : (int)fivc_ret(-ENOENT);
	/* before the switch TCP readiness is the program's; after it, only
	 * doorbells and FIN/RST (see kernel_mask) */
	struct epoll_event kev = {.events = 0, .data.u64 = TAG | (uint32_t)fd};
	pthread_mutex_lock(&s->lock);
	struct ep_entry *e = entry_of(s, fd);
	int r = 0;
	switch (op) {
	case EPOLL_CTL_ADD:
		if (e) {
			r = -EEXIST;
			break;
		}
		if (!ev) {
			r = -EFAULT;
			break;
		}
		kev.events = nested ? EPOLLIN | (ev->events & EPOLLET)
			     : fs->state == FS_ACCEL
				     ? EPOLLIN | EPOLLRDHUP
				     : (ev->events & (EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLPRI)) | EPOLLIN;
		if (fivc_real.epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &kev) < 0) {
			r = -errno;
			break;
		}
		e = calloc(1, sizeof(*e));
		if (!e) {
			fivc_real.epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL);
			r = -ENOMEM;
			break;
		}
		e->fd = fd;
		e->nested = nested;
		e->kmask = kev.events;
		e->events = ev->events;
		e->data = ev->data;
		e->seen_in = e->seen_out = UINT64_MAX;
		e->next = s->head;
		s->head = e;
		break;
	case EPOLL_CTL_MOD:
		if (!e) {
			r = -ENOENT;
			break;
		}
		if (!ev) {
			r = -EFAULT;
			break;
		}
		e->events = ev->events;
		e->data = ev->data;
		e->disabled = 0;
		e->seen_in = e->seen_out = UINT64_MAX;
		if (e->nested && (e->kmask & EPOLLET) != (ev->events & EPOLLET)) {
			kev.events = EPOLLIN | (ev->events & EPOLLET);
			if (fivc_real.epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &kev) == 0)
				e->kmask = kev.events;
		}
		break;
	case EPOLL_CTL_DEL:
		if (!e) {
			r = -ENOENT;
			break;
		}
		entry_remove(s, fd);
		if (fivc_real.epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL) < 0)
			r = -errno;
		break;
	default:
		r = -EINVAL;
	}
	pthread_mutex_unlock(&s->lock);
	return (int)fivc_ret(r);
}

/* Is this an edge-triggered entry whose ring has not moved since its last
 * report?  Then it is not to be reported, and must sleep until it moves. */
static int et_unmoved(struct ep_entry *e, struct fsock *fs, uint32_t ev)
{
	if (!(e->events & EPOLLET) || fs->state != FS_ACCEL || !fs->ch.f)
		return 0;
	if ((ev & EPOLLIN) &&
	    __atomic_load_n(&fs->ch.rx->tail, __ATOMIC_ACQUIRE) != e->seen_in)
		return 0;
	if ((ev & EPOLLOUT) &&
	    __atomic_load_n(&fs->ch.tx->head, __ATOMIC_ACQUIRE) != e->seen_out)
		return 0;
	return 1;
}

static uint32_t nested_ready(struct ep_entry *e, int peek);

/* What to report for one entry now (0: nothing).  peek: only look (no edge
 * is consumed), for a set that contains this one. */
static uint32_t entry_ready(struct ep_entry *e, int peek)
{
	if (e->disabled)
		return 0;
	if (e->nested)
		return nested_ready(e, peek);
	struct fsock *fs = fivc_fs(e->fd);
	if (!fs)
		return 0;
	short kev;
	short r = fivc_fs_ready(fs, e->fd, to_poll(e->events), 0, &kev);
	if (fs->state != FS_ACCEL) {
		/* still on TCP for these events: ask the kernel now */
		struct pollfd p = {.fd = e->fd, .events = kev};
		if (kev && fivc_real.poll(&p, 1, 0) > 0)
			r |= p.revents & (kev | POLLERR | POLLHUP);
	}
	uint32_t out = to_epoll(r) & (e->events | EPOLLERR | EPOLLHUP);
	if (out && !(out & (EPOLLERR | EPOLLHUP | EPOLLRDHUP)) && et_unmoved(e, fs, out))
		return 0;
	if (out && !peek && (e->events & EPOLLET) && fs->state == FS_ACCEL) {
		e->seen_in = __atomic_load_n(&fs->ch.rx->tail, __ATOMIC_ACQUIRE);
		e->seen_out = __atomic_load_n(&fs->ch.tx->head, __ATOMIC_ACQUIRE);
	}
	return out;
}

/* Sum of the ring positions under a set: it changes when any ring moves. */
static uint64_t set_signature(struct ep_set *s, int depth)
{
	uint64_t sig = 0;
	for (struct ep_entry *e = s->head; e; e = e->next) {
		if (e->nested) {
			struct ep_set *in = depth < 4 ? set_for(e->fd, 0) : NULL;
			if (in) {
				pthread_mutex_lock(&in->lock);
				sig += set_signature(in, depth + 1);
				pthread_mutex_unlock(&in->lock);
			}
			continue;
		}
		struct fsock *fs = fivc_fs(e->fd);
		if (fs && fs->state == FS_ACCEL && fs->ch.f)
			sig += __atomic_load_n(&fs->ch.rx->tail, __ATOMIC_ACQUIRE) +
			       __atomic_load_n(&fs->ch.tx->head, __ATOMIC_ACQUIRE);
	}
	return sig;
}

static int set_peek(struct ep_set *s)
{
	for (struct ep_entry *e = s->head; e; e = e->next)
		if (entry_ready(e, 1))
			return 1;
	return 0;
}

static uint32_t nested_ready(struct ep_entry *e, int peek)
{
	struct ep_set *in = set_for(e->fd, 0);
	int r = 0;
	uint64_t sig = 0;
	if (in) {
		pthread_mutex_lock(&in->lock);
		r = set_peek(in);
		if (e->events & EPOLLET)
			sig = set_signature(in, 0);
		pthread_mutex_unlock(&in->lock);
	}
	if (!r) {
		struct pollfd p = {.fd = e->fd, .events = POLLIN};
		r = fivc_real.poll(&p, 1, 0) > 0 && (p.revents & POLLIN);
	}
	if (!r || !(e->events & EPOLLIN))
		return 0;
	if (e->events & EPOLLET) {
		if (sig == e->seen_in && !e->kwoke)
			return 0;
		if (!peek) {
			e->seen_in = sig;
			e->kwoke = 0;
		}
	}
	return EPOLLIN;
}

static int collect(struct ep_set *s, struct epoll_event *out, int max)
{
	int n = 0;
	for (struct ep_entry *e = s->head; e && n < max; e = e->next) {
		uint32_t r = entry_ready(e, 0);
		if (!r)
			continue;
		out[n].events = r;
		out[n].data = e->data;
		n++;
		if (e->events & EPOLLONESHOT)
			e->disabled = 1;
	}
	return n;
}

/* Before sleeping: make every entry's peer ring the doorbell on a change,
 * and keep the kernel's mask in step with the socket's state.  Returns 1 if
 * an entry turned reportable meanwhile (then: collect again). */
static int arm_all(struct ep_set *s, int force)
{
	int ready = 0;
	for (struct ep_entry *e = s->head; e; e = e->next) {
		if (e->nested && !e->disabled) {
			if (entry_ready(e, 1))
				ready = 1;
			else /* unreportable (ET, nothing new): wake on any move */
				fivc_epoll_fd_ready(e->fd, force || (e->events & EPOLLET) ? 2 : 1);
			if (!ready && !(e->events & EPOLLET) && entry_ready(e, 1))
				ready = 1; /* it turned ready while we armed */
			continue;
		}
		struct fsock *fs = fivc_fs(e->fd);
		if (!fs || e->disabled)
			continue;
		uint32_t want = fs->state == FS_ACCEL
					? EPOLLIN | EPOLLRDHUP
					: (e->events & (EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLPRI)) | EPOLLIN;
		if (want != e->kmask) {
			struct epoll_event kev = {.events = want, .data.u64 = TAG | (uint32_t)e->fd};
			if (fivc_real.epoll_ctl(s->epfd, EPOLL_CTL_MOD, e->fd, &kev) == 0)
				e->kmask = want;
		}
		if (!fivc_fs_uses_fabric(fs))
			continue;
		int rd = (e->events & EPOLLIN) != 0, wr = (e->events & EPOLLOUT) != 0;
		if (fs->state != FS_ACCEL) {
			/* The kernel watches TCP for it; arm the ring for reading as
			 * well: the peer adopts/switches without a doorbell and its
			 * first ring write must wake us (io.c).  Regression: wrk
			 * against nginx stalled when its epoll_wait began before the
			 * server's accept. */
			if (rd)
				fivc_chan_arm_always(&fs->ch, 1, 0);
			continue;
		}
		if (force || et_unmoved(e, fs, e->events & (EPOLLIN | EPOLLOUT))) {
			fivc_chan_arm_always(&fs->ch, rd, wr); /* wake on the next move */
			continue;
		}
		if (fivc_chan_arm(&fs->ch, rd, wr))
			ready = 1;
	}
	return ready;
}

static void disarm_all(struct ep_set *s)
{
	for (struct ep_entry *e = s->head; e; e = e->next) {
		if (e->nested) {
			fivc_epoll_fd_disarm(e->fd);
			continue;
		}
		struct fsock *fs = fivc_fs(e->fd);
		if (fs)
			fivc_fs_disarm(fs);
	}
}

int fivc_do_epoll_wait(int epfd, struct epoll_event *events, int max, int timeout_ms,
		       const sigset_t *mask)
{
	if (max <= 0)
		return fivc_real.epoll_pwait(epfd, events, max, timeout_ms, mask);
	struct ep_set *s = __atomic_load_n(&nsets, __ATOMIC_RELAXED) ? set_for(epfd, 0) : NULL;
	if (!s || !s->head)
		return fivc_real.epoll_pwait(epfd, events, max, timeout_ms, mask);
	uint64_t start = fivc_now_ns(CLOCK_MONOTONIC);
	uint64_t budget = fivc_cfg.spin_ns >> s->spin_fails;
	if (++s->spin_probe >= FIVC_SPIN_PROBE) {
		s->spin_probe = 0;
		budget = fivc_cfg.spin_ns;
	}
	if (timeout_ms != 0 && budget) {
		/* Spin before sleeping, as a blocking read does: a busy peer's next
		 * message usually comes within microseconds, and catching it here
		 * saves its doorbell and our wake-up (measured with nginx + wrk).
		 * The kernel is asked now and then, so plain fds are not starved. */
		for (unsigned i = 1;; i++) {
			pthread_mutex_lock(&s->lock);
			int n = collect(s, events, max);
			if (n)
				s->spin_fails = budget == fivc_cfg.spin_ns ? 0 : s->spin_fails >> 1;
			pthread_mutex_unlock(&s->lock);
			if (n)
				return n;
			if (!(i & 15)) {
				int k = fivc_real.epoll_pwait(epfd, events, max, 0, mask);
				if (k != 0) {
					if (k < 0)
						return k;
					break; /* let the full path sort ours from the program's */
				}
				if (fivc_now_ns(CLOCK_MONOTONIC) - start >= budget) {
					uint8_t f = s->spin_fails;
					s->spin_fails = f >= FIVC_SPIN_MAX_SHIFT / 2 ? FIVC_SPIN_MAX_SHIFT
										     : (uint8_t)(f ? f * 2 : 1);
					break;
				}
			}
			fivc_cpu_relax();
		}
	}
	for (;;) {
		pthread_mutex_lock(&s->lock);
		int n = collect(s, events, max);
		int again = !n && arm_all(s, 0);
		if (again)
			disarm_all(s);
		pthread_mutex_unlock(&s->lock);
		if (again)
			continue;
		int left = 0;
		if (!n) {
			if (timeout_ms < 0) {
				left = -1;
			} else {
				uint64_t el = (fivc_now_ns(CLOCK_MONOTONIC) - start) / 1000000;
				left = el >= (uint64_t)timeout_ms ? 0 : timeout_ms - (int)el;
			}
		}
		int k = fivc_real.epoll_pwait(epfd, events + n, max - n, left, mask);
		int e = errno;
		pthread_mutex_lock(&s->lock);
		disarm_all(s);
		if (k < 0) {
			pthread_mutex_unlock(&s->lock);
			return n ? n : (int)fivc_ret(-e);
		}
		/* keep the program's events; ours only woke us */
		int out = n, woke = 0;
		for (int i = n; i < n + k; i++) {
			uint64_t d = events[i].data.u64;
			if ((d & TAG_MASK) == TAG) {
				struct fsock *fs = fivc_fs((int)(uint32_t)d);
				if (fs && fs->state == FS_ACCEL)
					fivc_fs_drain(fs, (int)(uint32_t)d);
				else if (!fs) {
					struct ep_entry *ne = entry_of(s, (int)(uint32_t)d);
					if (ne && ne->nested)
						ne->kwoke = 1;
				}
				woke = 1;
				continue;
			}
			events[out++] = events[i];
		}
		if (woke && !n && out < max) /* (entries already reported stay once) */
			out += collect(s, events + out, max - out);
		pthread_mutex_unlock(&s->lock);
		if (out || (!n && left == 0))
			return out;
	}
}

int fivc_epoll_is_managed(int epfd)
{
	if (fivc_fd_kind(epfd) != FIVC_KIND_EPOLL || !__atomic_load_n(&nsets, __ATOMIC_RELAXED))
		return 0;
	struct ep_set *s = set_for(epfd, 0);
	return s && s->head;
}

static __thread int fd_depth; /* the kernel bounds nesting (5 levels); so do we */

short fivc_epoll_fd_ready(int epfd, int arm)
{
	struct ep_set *s = set_for(epfd, 0);
	if (!s || fd_depth > 5)
		return 0;
	fd_depth++;
	pthread_mutex_lock(&s->lock);
	int r = arm == 2 ? 0 : set_peek(s);
	if (arm == 2)
		arm_all(s, 1);
	else if (!r && arm && arm_all(s, 0)) {
		disarm_all(s);
		r = 1;
	}
	pthread_mutex_unlock(&s->lock);
	fd_depth--;
	return r ? POLLIN : 0;
}

void fivc_epoll_fd_disarm(int epfd)
{
	struct ep_set *s = set_for(epfd, 0);
	if (!s)
		return;
	pthread_mutex_lock(&s->lock);
	disarm_all(s);
	pthread_mutex_unlock(&s->lock);
}
