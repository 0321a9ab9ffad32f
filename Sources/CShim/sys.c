#define _GNU_SOURCE
#include "cshim.h"
#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/prctl.h>
#include <linux/fs.h>
#include <linux/loop.h>

unsigned long cshim_BLKDISCARD(void) { return BLKDISCARD; }
int cshim_ioctl_ptr(int fd, unsigned long req, void *arg) {
    int r;
    do { r = ioctl(fd, req, arg); } while (r < 0 && errno == EINTR);
    return r < 0 ? -errno : r;
}

int cshim_ioctl_int(int fd, unsigned long req, unsigned long arg) {
    int r;
    do { r = ioctl(fd, req, arg); } while (r < 0 && errno == EINTR);
    return r < 0 ? -errno : r;
}

unsigned long cshim_BLKGETSIZE64(void) { return BLKGETSIZE64; }
unsigned long cshim_BLKSSZGET(void) { return BLKSSZGET; }
unsigned long cshim_BLKBSZGET(void) { return BLKBSZGET; }
unsigned long cshim_BLKBSZSET(void) { return BLKBSZSET; }
unsigned long cshim_BLKROGET(void) { return BLKROGET; }
unsigned long cshim_BLKFLSBUF(void) { return BLKFLSBUF; }
unsigned long cshim_LOOP_CTL_GET_FREE(void) { return LOOP_CTL_GET_FREE; }
#ifndef LOOP_CONFIGURE
#define LOOP_CONFIGURE 0x4C0A
#endif
unsigned long cshim_LOOP_CONFIGURE(void) { return LOOP_CONFIGURE; }
unsigned long cshim_LOOP_CLR_FD(void) { return LOOP_CLR_FD; }
unsigned long cshim_LOOP_GET_STATUS64(void) { return LOOP_GET_STATUS64; }
unsigned long cshim_FS_IOC_GETFLAGS(void) { return FS_IOC_GETFLAGS; }
unsigned long cshim_FS_IOC_SETFLAGS(void) { return FS_IOC_SETFLAGS; }
unsigned long cshim_FS_IOC_GETVERSION(void) { return FS_IOC_GETVERSION; }
unsigned long cshim_FS_IOC_FSGETXATTR(void) { return FS_IOC_FSGETXATTR; }
unsigned long cshim_FS_IOC_FSSETXATTR(void) { return FS_IOC_FSSETXATTR; }
unsigned long cshim_FS_IOC_FIEMAP(void) { return 0xC020660B; /* _IOWR('f', 11, struct fiemap) */ }

static int ret_or_errno(long r) { return r < 0 ? -errno : (int)r; }

int cshim_memfd_create(const char *name, unsigned int flags) {
    return ret_or_errno(syscall(SYS_memfd_create, name, flags));
}
int cshim_fsopen(const char *fsname, unsigned int flags) {
    return ret_or_errno(syscall(SYS_fsopen, fsname, flags));
}
int cshim_fsconfig(int fd, unsigned int cmd, const char *key, const void *value, int aux) {
    return ret_or_errno(syscall(SYS_fsconfig, fd, cmd, key, value, aux));
}
int cshim_mount_setattr(int dfd, const char *path, unsigned int flags, unsigned long long attr_set,
                        unsigned long long attr_clr) {
    struct { unsigned long long attr_set, attr_clr, propagation, userns_fd; } a = { attr_set, attr_clr, 0, 0 };
    return ret_or_errno(syscall(SYS_mount_setattr, dfd, path, flags, &a, sizeof a));
}
int cshim_mount_set_private(int dfd, const char *path, unsigned int flags) {
    struct { unsigned long long attr_set, attr_clr, propagation, userns_fd; } a = { 0, 0, MS_PRIVATE, 0 };
    return ret_or_errno(syscall(SYS_mount_setattr, dfd, path, flags, &a, sizeof a));
}
int cshim_open_tree(int dfd, const char *path, unsigned int flags) {
    return ret_or_errno(syscall(SYS_open_tree, dfd, path, flags));
}
int cshim_fspick(int dfd, const char *path, unsigned int flags) {
    return ret_or_errno(syscall(SYS_fspick, dfd, path, flags));
}
int cshim_fsmount(int fd, unsigned int flags, unsigned int attr_flags) {
    return ret_or_errno(syscall(SYS_fsmount, fd, flags, attr_flags));
}
int cshim_move_mount(int from_dfd, const char *from_path, int to_dfd, const char *to_path, unsigned int flags) {
    return ret_or_errno(syscall(SYS_move_mount, from_dfd, from_path, to_dfd, to_path, flags));
}
pid_t cshim_gettid(void) { return (pid_t)syscall(SYS_gettid); }
void cshim_set_thread_name(const char *name) { prctl(PR_SET_NAME, name, 0, 0, 0); }
int cshim_set_dumpable(int dumpable) {
    return prctl(PR_SET_DUMPABLE, (unsigned long)dumpable, 0, 0, 0) < 0 ? -errno : 0;
}
int cshim_get_dumpable(void) {
    int r = prctl(PR_GET_DUMPABLE, 0, 0, 0, 0);
    return r < 0 ? -errno : r;
}

#define CSHIM_MAXFDS 16

ssize_t cshim_send_with_fds(int sock, const void *buf, size_t len, const int *fds, int nfds) {
    if (nfds < 0 || nfds > CSHIM_MAXFDS) return -EINVAL;
    struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
    union { struct cmsghdr h; char b[CMSG_SPACE(sizeof(int) * CSHIM_MAXFDS)]; } u;
    struct msghdr m;
    memset(&m, 0, sizeof(m));
    memset(&u, 0, sizeof(u));
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    if (nfds > 0) {
        m.msg_control = u.b;
        m.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
        struct cmsghdr *c = CMSG_FIRSTHDR(&m);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)nfds);
    }
    ssize_t r;
    do { r = sendmsg(sock, &m, MSG_NOSIGNAL); } while (r < 0 && errno == EINTR);
    return r < 0 ? -errno : r;
}
