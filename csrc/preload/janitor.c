/* fastivc preload — the janitor: ring memory goes back when idle (I10).
 *
 * A ring that grew onto a pool buffer (a stream, a large response) keeps it
 * while bytes flow.  Once the ring has stayed empty for a whole period the
 * janitor moves it back to its inline buffer and gives the pool buffer's
 * pages back to the system (fivc_chan_tx_idle); pool buffers that stayed
 * free for a period lose their pages too (fivc_pool_trim).  So the fabric
 * file's resident size follows the bytes in flight.
 *
 * Only the producer may switch its ring's buffer, and only under its
 * writer's lock, so the janitor is a thread of the producer's own process:
 * started on the first ring that grows, it watches the connections whose
 * rings did (a list, never the whole fd table) and takes each one's
 * writer lock with trylock (a busy writer is not idle anyway).  The list
 * lock is taken on the write path only when a ring has just grown, and on
 * close only for a connection on the list.
 */
#include <dlfcn.h>
#include <signal.h>
#include <time.h>

#include "preload.h"

#define JANITOR_PERIOD_MS 1000

static pthread_mutex_t jlock = PTHREAD_MUTEX_INITIALIZER;
static struct fsock *jhead;          /* connections whose ring grew */
static struct fivc_fabric *jfab;     /* whose pool to trim */
static int jstarted;

static void unlink_fs(struct fsock *fs)
{
	if (fs->jnext)
		fs->jnext->jprev = fs->jprev;
	*(fs->jprev ? &fs->jprev->jnext : &jhead) = fs->jnext;
	fs->jnext = fs->jprev = NULL;
	__atomic_store_n(&fs->on_janitor, 0, __ATOMIC_RELAXED);
}

static void *janitor(void *arg)
{
	(void)arg;
	for (;;) {
		struct timespec ts = {JANITOR_PERIOD_MS / 1000, (JANITOR_PERIOD_MS % 1000) * 1000000L};
		nanosleep(&ts, NULL);
		pthread_mutex_lock(&jlock);
		fivc_guard++;
		for (struct fsock *fs = jhead, *next; fs; fs = next) {
			next = fs->jnext;
			if (pthread_mutex_trylock(&fs->wr_lock) != 0)
				continue;
			int still = fs->state == FS_ACCEL && fs->ch.f && !fs->down &&
				    fivc_chan_tx_idle(&fs->ch);
			pthread_mutex_unlock(&fs->wr_lock);
			if (!still)
				unlink_fs(fs);
		}
		if (jfab)
			fivc_pool_trim(jfab);
		fivc_guard--;
		pthread_mutex_unlock(&jlock);
	}
	return NULL;
}

/* A detached thread with every signal blocked, so that none of the
 * program's lands on it. */
int fivc_start_thread(void *(*fn)(void *)) { return fivc_start_thread_arg(fn, NULL); }

void *fivc_next_sym(void **slot, const char *name)
{
	void *f = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
	if (!f) {
		f = dlsym(RTLD_NEXT, name);
		__atomic_store_n(slot, f, __ATOMIC_RELEASE);
	}
	return f;
}

int fivc_start_thread_arg(void *(*fn)(void *), void *arg)
{
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	pthread_attr_t a;
	pthread_t t;
	pthread_attr_init(&a);
	pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
	int r = pthread_create(&t, &a, fn, arg);
	pthread_attr_destroy(&a);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return -r;
}

void fivc_janitor_watch(struct fsock *fs)
{
	if (fs->on_janitor || !fivc_chan_tx_grown(&fs->ch))
		return;
	pthread_mutex_lock(&jlock);
	fs->on_janitor = 1;
	fs->jprev = NULL;
	fs->jnext = jhead;
	if (jhead)
		jhead->jprev = fs;
	jhead = fs;
	jfab = fs->fab;
	if (!jstarted) {
		jstarted = fivc_start_thread(janitor) == 0;
		if (!jstarted)
			FIVC_INFO("no janitor thread: grown rings keep their memory until closed");
	}
	pthread_mutex_unlock(&jlock);
}

void fivc_janitor_forget(struct fsock *fs)
{
	if (!__atomic_load_n(&fs->on_janitor, __ATOMIC_RELAXED))
		return;
	pthread_mutex_lock(&jlock);
	if (fs->on_janitor)
		unlink_fs(fs);
	pthread_mutex_unlock(&jlock);
}

/* fork: the janitor's lock must not be inherited held; the child has no
 * janitor thread until one of its own rings grows (the list it inherits
 * is the parent's connections, now shared: the janitor leaves those be). */
void fivc_janitor_fork_prepare(void) { pthread_mutex_lock(&jlock); }
void fivc_janitor_fork_parent(void) { pthread_mutex_unlock(&jlock); }
void fivc_janitor_fork_child(void)
{
	pthread_mutex_init(&jlock, NULL);
	jstarted = 0;
}
