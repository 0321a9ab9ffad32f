#define _GNU_SOURCE
#include "cshim_pin.h"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <linux/openat2.h>

#ifndef SYS_openat2
#define SYS_openat2 437
#endif
#ifndef STATX_MNT_ID
#define STATX_MNT_ID 0x00001000U
#endif

int cshim_pin_open_nosymlinks(int dirfd, const char *path, int flags) {
    struct open_how how;
    memset(&how, 0, sizeof(how));
    how.flags = (uint64_t)(flags | O_CLOEXEC);
    how.resolve = RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
    long r;
    do { r = syscall(SYS_openat2, dirfd, path, &how, sizeof(how)); } while (r < 0 && errno == EINTR);
    if (r >= 0) return (int)r;
    if (errno != ENOSYS) return -errno;
    do { r = openat(dirfd, path, flags | O_CLOEXEC | O_NOFOLLOW); } while (r < 0 && errno == EINTR);
    return r < 0 ? -errno : (int)r;
}

int cshim_pin_reopen(int pathfd, int flags) {
    char p[64];
    snprintf(p, sizeof(p), "/proc/self/fd/%d", pathfd);
    int r;
    do { r = open(p, flags | O_CLOEXEC | O_NOCTTY); } while (r < 0 && errno == EINTR);
    return r < 0 ? -errno : r;
}

int cshim_pin_umount_fd(int mountfd, int flags) {
    char p[64];
    snprintf(p, sizeof(p), "/proc/self/fd/%d", mountfd);
    int r;
    do { r = umount2(p, flags); } while (r < 0 && errno == EINTR);
    return r < 0 ? -errno : 0;
}

int cshim_pin_send_timeout(int sock, int timeout_ms) {
    struct timeval tv = { .tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000 };
    return setsockopt(sock, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0 ? -errno : 0;
}

int64_t cshim_pin_fs_type(int fd) {
    struct statfs s;
    if (fstatfs(fd, &s) < 0) return 0;
    return (int64_t)s.f_type;
}

int64_t cshim_pin_mount_id(int fd) {
    struct statx sx;
    memset(&sx, 0, sizeof(sx));
    if (statx(fd, "", AT_EMPTY_PATH | AT_STATX_DONT_SYNC, STATX_MNT_ID, &sx) < 0) return -errno;
    if (!(sx.stx_mask & STATX_MNT_ID)) return -EOPNOTSUPP;
    return (int64_t)sx.stx_mnt_id;
}

int cshim_pin_dev(int fd, uint32_t *major, uint32_t *minor) {
    struct statx sx;
    memset(&sx, 0, sizeof(sx));
    if (statx(fd, "", AT_EMPTY_PATH | AT_STATX_DONT_SYNC, 0, &sx) < 0) return -errno;
    *major = sx.stx_dev_major;
    *minor = sx.stx_dev_minor;
    return 0;
}
