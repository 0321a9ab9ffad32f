#define _GNU_SOURCE
#include "cshim_broker.h"
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <stdio.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <linux/loop.h>
#include <linux/magic.h>

#ifndef LOOP_CONFIGURE
#define LOOP_CONFIGURE 0x4C0A
#endif
#ifndef SO_PASSRIGHTS
#define SO_PASSRIGHTS 83
#endif

int cshim_broker_loop_configure(int loopfd, int backingfd, uint32_t block_size, uint32_t lo_flags) {
    struct loop_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.fd = (uint32_t)backingfd;
    cfg.block_size = block_size;
    cfg.info.lo_flags = lo_flags;
    int r;
    do { r = ioctl(loopfd, LOOP_CONFIGURE, &cfg); } while (r < 0 && errno == EINTR);
    return r < 0 ? -errno : 0;
}

int cshim_broker_loop_status(int loopfd, uint64_t *dev, uint64_t *ino, uint32_t *flags) {
    struct loop_info64 info;
    memset(&info, 0, sizeof(info));
    int r;
    do { r = ioctl(loopfd, LOOP_GET_STATUS64, &info); } while (r < 0 && errno == EINTR);
    if (r < 0) return -errno;
    *dev = info.lo_device;
    *ino = info.lo_inode;
    *flags = info.lo_flags;
    return 0;
}

ssize_t cshim_broker_send(int sock, const void *buf, size_t len, int fd) {
    struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
    union { struct cmsghdr h; char b[CMSG_SPACE(sizeof(int))]; } u;
    struct msghdr m;
    memset(&m, 0, sizeof(m));
    memset(&u, 0, sizeof(u));
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    if (fd >= 0) {
        m.msg_control = u.b;
        m.msg_controllen = CMSG_SPACE(sizeof(int));
        struct cmsghdr *c = CMSG_FIRSTHDR(&m);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof(int));
    }
    ssize_t r;
    do { r = sendmsg(sock, &m, MSG_EOR | MSG_NOSIGNAL); } while (r < 0 && errno == EINTR);
    return r < 0 ? -errno : r;
}

#define BROKER_CMSG_FDS 8

ssize_t cshim_broker_recv(int sock, void *buf, size_t len, int timeout_ms,
                          int *fds, int maxfds, int *nfds, int *extra_fds, int *msg_flags) {
    *nfds = 0;
    *extra_fds = 0;
    *msg_flags = 0;
    for (;;) {
        struct pollfd p = { .fd = sock, .events = POLLIN, .revents = 0 };
        int pr = poll(&p, 1, timeout_ms);
        if (pr < 0) {
            if (errno == EINTR) continue;
            return -errno;
        }
        if (pr == 0) return -ETIMEDOUT;
        break;
    }
    struct iovec iov = { .iov_base = buf, .iov_len = len };
    union { struct cmsghdr h; char b[CMSG_SPACE(sizeof(int) * BROKER_CMSG_FDS)]; } u;
    memset(&u, 0, sizeof(u));
    struct msghdr m;
    memset(&m, 0, sizeof(m));
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = u.b;
    m.msg_controllen = sizeof(u.b);
    ssize_t r;
    do { r = recvmsg(sock, &m, MSG_CMSG_CLOEXEC | MSG_TRUNC | MSG_DONTWAIT); } while (r < 0 && errno == EINTR);
    if (r < 0) return -errno;
    *msg_flags = m.msg_flags;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        if (c->cmsg_len < CMSG_LEN(0)) continue;
        size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        unsigned char *p = CMSG_DATA(c);
        for (size_t i = 0; i < n; i++) {
            int fd;
            memcpy(&fd, p + i * sizeof(int), sizeof(int));
            if (*nfds < maxfds) fds[(*nfds)++] = fd;
            else { close(fd); (*extra_fds)++; }
        }
    }
    return r;
}

int cshim_broker_drop_passrights(int sock) {
    int zero = 0;
    if (setsockopt(sock, SOL_SOCKET, SO_PASSRIGHTS, &zero, sizeof(zero)) < 0) return -errno;
    return 0;
}

static void child_fail(int pipefd, int err) {
    ssize_t w;
    do { w = write(pipefd, &err, sizeof(err)); } while (w < 0 && errno == EINTR);
    _exit(127);
}

pid_t cshim_broker_spawn_sandboxed(const char *path, char *const argv[], char *const envp[],
                                   int sockfd, int errfd, uid_t uid, gid_t gid, int ns_flags) {
    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) < 0) return -errno;
    // Raw clone with SIGCHLD behaves like fork; new namespaces apply to the child.
    long pid = syscall(SYS_clone, (unsigned long)(ns_flags | SIGCHLD), NULL, NULL, NULL, NULL);
    if (pid < 0) {
        int e = errno;
        close(pfd[0]);
        close(pfd[1]);
        return -e;
    }
    if (pid == 0) {
        // Child: only async-signal-safe calls from here on.
        int wr = pfd[1];
        close(pfd[0]);
        // Reset signal dispositions and mask.
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        for (int s = 1; s < 65; s++) {
            if (s == SIGKILL || s == SIGSTOP) continue;
            signal(s, SIG_DFL);
        }
        // A session of its own: no controlling terminal, outside the helper's
        // foreground process group (no keystrokes, no terminal signals).
        if (setsid() < 0) child_fail(wr, errno);
        // Park every fd we keep at 10 or above, then lay out 0-1 = /dev/null,
        // 2 = errfd (the helper's relay pipe; /dev/null without one),
        // 3 = the socket (inheritable), 4 = the error pipe (close-on-exec),
        // and close everything else.
        int s = fcntl(sockfd, F_DUPFD_CLOEXEC, 10);
        if (s < 0) child_fail(wr, errno);
        int w = fcntl(wr, F_DUPFD_CLOEXEC, 10);
        if (w < 0) child_fail(wr, errno);
        int e = -1;
        if (errfd >= 0 && (e = fcntl(errfd, F_DUPFD_CLOEXEC, 10)) < 0) child_fail(w, errno);
        int n = open("/dev/null", O_RDWR | O_CLOEXEC);
        if (n < 0) child_fail(w, errno);
        int nullfd = fcntl(n, F_DUPFD_CLOEXEC, 10);
        if (nullfd < 0) child_fail(w, errno);
        close(n);
        if (dup2(nullfd, 0) < 0 || dup2(nullfd, 1) < 0) child_fail(w, errno);
        if (dup2(e >= 0 ? e : nullfd, 2) < 0) child_fail(w, errno);
        if (dup2(s, 3) < 0) child_fail(w, errno);
        if (dup3(w, 4, O_CLOEXEC) < 0) child_fail(w, errno);
        wr = 4;
        if (syscall(SYS_close_range, 5, ~0U, 0) < 0) {
            for (int fd = 5; fd < 4096; fd++) close(fd);
        }
        if (ns_flags & CLONE_NEWNS) {
            if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) {
                child_fail(wr, errno);
            }
        }
        if (chdir("/") < 0) { child_fail(wr, errno); }
        for (int cap = 0; cap < 64; cap++) {
            if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno != EINVAL) {
                child_fail(wr, errno);
            }
        }
        // Raw syscalls: glibc's wrappers would signal every thread the parent
        // had and wait for them (under a lock another thread may have held at
        // clone time); this child has one thread.
        if (syscall(SYS_setgroups, 0, NULL) < 0) { child_fail(wr, errno); }
        if (syscall(SYS_setresgid, gid, gid, gid) < 0) { child_fail(wr, errno); }
        if (syscall(SYS_setresuid, uid, uid, uid) < 0) { child_fail(wr, errno); }
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) { child_fail(wr, errno); }
        execve(path, argv, envp);
        child_fail(wr, errno);
        _exit(127);
    }
    close(pfd[1]);
    int err = 0;
    ssize_t n;
    do { n = read(pfd[0], &err, sizeof(err)); } while (n < 0 && errno == EINTR);
    close(pfd[0]);
    if (n == (ssize_t)sizeof(err)) {
        int st;
        while (waitpid((pid_t)pid, &st, 0) < 0 && errno == EINTR) {}
        return -(err ? err : ECHILD);
    }
    return (pid_t)pid;
}

// ---- an empty root for a spawned server ---------------------------------

// Runs in a short-lived child of the helper, inside the server's mount
// namespace. Returns 0 or -errno; async-signal-safe calls only.
static int empty_root_child(int nsfd) {
    if (setns(nsfd, CLONE_NEWNS) < 0) return -errno;
    // setns made the namespace's root our root and cwd. Nothing done below may
    // propagate to another namespace: make every mount private first (spawn
    // did so already; this costs nothing and does not rely on it).
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) return -errno;
    // Any existing directory serves as the place to mount the new root on:
    // it is only ever seen in this namespace, and only until the pivot.
    static const char *const places[] = { "/tmp", "/dev", "/proc", "/mnt", "/run" };
    const char *place = NULL;
    for (size_t i = 0; i < sizeof(places) / sizeof(places[0]); i++) {
        struct stat st;
        if (lstat(places[i], &st) == 0 && S_ISDIR(st.st_mode)) { place = places[i]; break; }
    }
    if (place == NULL) return -ENOENT;
    // Read-only from the start: the new root never needs a single entry.
    if (mount("ext4iomap-empty", place, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
              "mode=0755,uid=0,gid=0,size=4k,nr_inodes=2") < 0) return -errno;
    if (chdir(place) < 0) return -errno;
    // pivot_root(".", "."): the tmpfs becomes the root of the namespace and
    // the old root is stacked on top of it; every process of the namespace
    // whose root or cwd was the old root (the server) now has the tmpfs.
    if (syscall(SYS_pivot_root, ".", ".") < 0) return -errno;
    // Detach the old root and every mount under it (lazily: the server's
    // open fds keep what they point at, nothing else stays reachable).
    if (umount2(".", MNT_DETACH) < 0) return -errno;
    if (chdir("/") < 0) return -errno;
    struct statfs sf;
    if (statfs("/", &sf) < 0) return -errno;
    if (sf.f_type != TMPFS_MAGIC) return -EXDEV;
    return 0;
}

int cshim_broker_empty_root(pid_t pid, int timeout_ms) {
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/ns/mnt", (int)pid);
    int nsfd;
    do { nsfd = open(path, O_RDONLY | O_CLOEXEC); } while (nsfd < 0 && errno == EINTR);
    if (nsfd < 0) return -errno;
    // Never pivot our own namespace: that would empty the helper's (and the
    // host's) root. The server must be in a mount namespace of its own.
    struct stat theirs, mine;
    if (fstat(nsfd, &theirs) < 0 || stat("/proc/self/ns/mnt", &mine) < 0) {
        int e = errno;
        close(nsfd);
        return -e;
    }
    if (theirs.st_dev == mine.st_dev && theirs.st_ino == mine.st_ino) {
        close(nsfd);
        return -EINVAL;
    }
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0) {
        int e = errno;
        close(nsfd);
        return -e;
    }
    // Raw clone, like the spawn: no atfork handlers in a threaded helper.
    long c = syscall(SYS_clone, (unsigned long)SIGCHLD, NULL, NULL, NULL, NULL);
    if (c < 0) {
        int e = errno;
        close(nsfd);
        close(p[0]);
        close(p[1]);
        return -e;
    }
    if (c == 0) {
        close(p[0]);
        int r = empty_root_child(nsfd);
        ssize_t w;
        do { w = write(p[1], &r, sizeof(r)); } while (w < 0 && errno == EINTR);
        _exit(r == 0 ? 0 : 1);
    }
    close(p[1]);
    close(nsfd);
    int result = -EPROTO;  // the child died without a report
    struct pollfd pf = { .fd = p[0], .events = POLLIN, .revents = 0 };
    int pr;
    do { pr = poll(&pf, 1, timeout_ms); } while (pr < 0 && errno == EINTR);
    if (pr == 0) {
        result = -ETIMEDOUT;
        kill((pid_t)c, SIGKILL);
    } else if (pr < 0) {
        result = -errno;
        kill((pid_t)c, SIGKILL);
    } else {
        int r = 0;
        ssize_t n;
        do { n = read(p[0], &r, sizeof(r)); } while (n < 0 && errno == EINTR);
        if (n == (ssize_t)sizeof(r)) result = r;
    }
    close(p[0]);
    int st;
    while (waitpid((pid_t)c, &st, 0) < 0 && errno == EINTR) {}
    if (result != 0) return result;
    // Check from outside that the server itself moved: its root and its cwd
    // are the empty tmpfs now.
    const char *const which[] = { "root", "cwd" };
    for (int i = 0; i < 2; i++) {
        struct statfs sf;
        snprintf(path, sizeof(path), "/proc/%d/%s/", (int)pid, which[i]);
        if (statfs(path, &sf) < 0) return -errno;
        if (sf.f_type != TMPFS_MAGIC) return -EXDEV;
    }
    return 0;
}

int cshim_broker_pipe2(int fds[2], int flags) { return pipe2(fds, flags) < 0 ? -errno : 0; }

int cshim_broker_timedjoin(pthread_t thread, int timeout_ms) {
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) < 0) return errno;
    ts.tv_sec += timeout_ms / 1000;
    ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) { ts.tv_sec += 1; ts.tv_nsec -= 1000000000L; }
    int r;
    do { r = pthread_timedjoin_np(thread, NULL, &ts); } while (r == EINTR);
    return r;
}

pid_t cshim_broker_waitpid(pid_t pid, int *status, int options) {
    pid_t r;
    do { r = waitpid(pid, status, options); } while (r < 0 && errno == EINTR);
    return r < 0 ? -errno : r;
}
int cshim_broker_wifexited(int status) { return WIFEXITED(status); }
int cshim_broker_wexitstatus(int status) { return WEXITSTATUS(status); }
int cshim_broker_wifsignaled(int status) { return WIFSIGNALED(status); }
int cshim_broker_wtermsig(int status) { return WTERMSIG(status); }

uint32_t cshim_broker_LO_FLAGS_READ_ONLY(void) { return LO_FLAGS_READ_ONLY; }
uint32_t cshim_broker_LO_FLAGS_AUTOCLEAR(void) { return LO_FLAGS_AUTOCLEAR; }
uint32_t cshim_broker_LO_FLAGS_DIRECT_IO(void) { return LO_FLAGS_DIRECT_IO; }
int cshim_broker_CLONE_NEWNS(void) { return CLONE_NEWNS; }
int cshim_broker_CLONE_NEWNET(void) { return CLONE_NEWNET; }
int cshim_broker_CLONE_NEWIPC(void) { return CLONE_NEWIPC; }
int cshim_broker_CLONE_NEWPID(void) { return CLONE_NEWPID; }
int cshim_broker_O_PATH(void) { return O_PATH; }
int cshim_broker_O_DIRECT(void) { return O_DIRECT; }

int cshim_broker_setns_mnt(int fd) { return setns(fd, CLONE_NEWNS) < 0 ? -errno : 0; }
