/* How long fork() takes in a process that holds N idle connections over
 * loopback, and optionally one of them also on a high fd number (issue 10:
 * fork and exec cost must not depend on the number of fds).  A plain socket
 * program: run it plain and under fastivc and compare.
 *
 *   forkbench N [HIGH_FD [REPS]]
 *
 * A helper process (forked before any connection exists) accepts the N
 * connections and holds the server ends; this process holds the client
 * ends, each used once (one byte each way, so under fastivc it is on the
 * ring).  Then it forks REPS times; each child exits at once and is waited
 * for.  Prints one JSON line: the connection count, the high fd, and the
 * parent's fork() latency (median, min, max in microseconds).  Under
 * fastivc it also reports the library's counters (fastivc_fork_stats,
 * found with dlsym) after the forks: connections held, sides still shared. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what)
{
	perror(what);
	exit(2);
}

static double now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int cmp_d(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
	if (argc < 2)
		return 2;
	int n = atoi(argv[1]);
	int high = argc > 2 ? atoi(argv[2]) : 0;
	int reps = argc > 3 ? atoi(argv[3]) : 30;
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	int ls = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t al = sizeof(a);
	if (ls < 0 || bind(ls, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(ls, 4096) < 0 ||
	    getsockname(ls, (struct sockaddr *)&a, &al) < 0)
		die("listen");
	int hold[2];
	if (pipe(hold) < 0)
		die("pipe");
	pid_t srv = fork();
	if (srv < 0)
		die("fork");
	if (srv == 0) { /* accept n, echo one byte on each, hold them until stdin-pipe closes */
		close(hold[1]);
		for (int i = 0; i < n; i++) {
			int s = accept(ls, NULL, NULL);
			char c;
			if (s < 0 || read(s, &c, 1) != 1 || write(s, &c, 1) != 1)
				_exit(3);
		}
		char c;
		while (read(hold[0], &c, 1) > 0)
			;
		_exit(0);
	}
	close(hold[0]);
	close(ls);
	int last = -1;
	for (int i = 0; i < n; i++) {
		int c = socket(AF_INET, SOCK_STREAM, 0);
		char b = 'x';
		if (c < 0 || connect(c, (struct sockaddr *)&a, sizeof(a)) < 0)
			die("connect");
		if (write(c, &b, 1) != 1 || read(c, &b, 1) != 1)
			die("echo");
		last = c;
	}
	if (high > 0 && last >= 0 && dup2(last, high) < 0)
		die("dup2 to the high fd");
	double *t = calloc((size_t)reps, sizeof(*t));
	for (int r = 0; r < reps; r++) {
		double t0 = now_us();
		pid_t p = fork();
		double t1 = now_us();
		if (p < 0)
			die("fork");
		if (p == 0)
			_exit(0);
		int st;
		waitpid(p, &st, 0);
		t[r] = t1 - t0;
	}
	qsort(t, (size_t)reps, sizeof(*t), cmp_d);
	void (*stats)(uint64_t *) = (void (*)(uint64_t *))dlsym(RTLD_DEFAULT, "fastivc_fork_stats");
	uint64_t s[4] = {0};
	if (stats)
		stats(s);
	printf("{\"conns\": %d, \"high_fd\": %d, \"reps\": %d, \"fork_us_median\": %.1f, "
	       "\"fork_us_min\": %.1f, \"fork_us_max\": %.1f, \"fastivc\": %s, \"held\": %llu, "
	       "\"shared\": %llu}\n",
	       n, high, reps, t[reps / 2], t[0], t[reps - 1], stats ? "true" : "false",
	       (unsigned long long)s[0], (unsigned long long)s[1]);
	fflush(stdout);
	close(hold[1]);
	int st;
	waitpid(srv, &st, 0);
	return 0;
}
