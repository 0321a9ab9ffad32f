// C helpers for pinning the helper's own resources (source, mountpoint) by
// inode, so that a path swapped later cannot redirect the helper.
#ifndef EXT4IOMAP_CSHIM_PIN_H
#define EXT4IOMAP_CSHIM_PIN_H

#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/// openat2(dirfd, path, flags | O_CLOEXEC, RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS):
/// no component of `path` may be a symlink. Falls back to openat(O_NOFOLLOW)
/// (last component only) where the kernel has no openat2. Returns fd or -errno.
int cshim_pin_open_nosymlinks(int dirfd, const char *path, int flags);

/// Reopen the inode behind an O_PATH fd with new open flags (through
/// /proc/self/fd, never a path an unprivileged user controls). fd or -errno.
int cshim_pin_reopen(int pathfd, int flags);

/// umount2("/proc/self/fd/N", flags): unmount the mount whose root `mountfd`
/// (an fsmount fd or an O_PATH fd on the mount's root) refers to. 0 or -errno.
int cshim_pin_umount_fd(int mountfd, int flags);

/// setsockopt SO_SNDTIMEO (milliseconds). 0 or -errno.
int cshim_pin_send_timeout(int sock, int timeout_ms);

/// statfs f_type of an fd, or 0 on error.
int64_t cshim_pin_fs_type(int fd);

/// statx(fd, "", AT_EMPTY_PATH, STATX_MNT_ID): the mount id, or -errno.
int64_t cshim_pin_mount_id(int fd);

/// The device number (major, minor) of the file system `fd` is on, from
/// statx with AT_STATX_DONT_SYNC: on a FUSE mount this asks the server
/// nothing (a plain fstat would send GETATTR, which waits for a server that
/// may not have answered INIT yet). 0 or -errno.
int cshim_pin_dev(int fd, uint32_t *major, uint32_t *minor);

#ifdef __cplusplus
}
#endif
#endif
