// Tiny C helpers for what Swift cannot express directly: variadic ioctl,
// CMSG macros, raw syscalls without glibc wrappers, and crc32c/crc16.
#ifndef EXT4IOMAP_CSHIM_H
#define EXT4IOMAP_CSHIM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/xattr.h>

#ifdef __cplusplus
extern "C" {
#endif

// ---- checksums ----------------------------------------------------------
/// crc32c (Castagnoli) without the final inversion, as ext4 uses it:
/// pass the running value (ext4 seeds with ~0) and get the raw register back.
uint32_t cshim_crc32c(uint32_t crc, const void *buf, size_t len);
/// 1 when the SSE4.2 crc32 instruction is used, 0 for the table fallback.
int cshim_crc32c_hw(void);
/// Force the table implementation (tests compare both paths).
uint32_t cshim_crc32c_sw(uint32_t crc, const void *buf, size_t len);
/// crc16 (poly 0x8005, reflected, "crc16-ansi/ARC") as used by ext4 gdt_csum.
uint16_t cshim_crc16(uint16_t crc, const void *buf, size_t len);

// ---- ioctl wrappers (retry EINTR; return -errno on failure) -------------
int cshim_ioctl_ptr(int fd, unsigned long req, void *arg);
unsigned long cshim_BLKDISCARD(void);
int cshim_ioctl_int(int fd, unsigned long req, unsigned long arg);

// ioctl request numbers used across the project (generic _IOC encoding).
unsigned long cshim_BLKGETSIZE64(void);
unsigned long cshim_BLKSSZGET(void);
unsigned long cshim_BLKBSZGET(void);
unsigned long cshim_BLKBSZSET(void);
unsigned long cshim_BLKROGET(void);
unsigned long cshim_BLKFLSBUF(void);
unsigned long cshim_LOOP_CTL_GET_FREE(void);
unsigned long cshim_LOOP_CONFIGURE(void);
unsigned long cshim_LOOP_CLR_FD(void);
unsigned long cshim_LOOP_GET_STATUS64(void);
unsigned long cshim_FS_IOC_GETFLAGS(void);
unsigned long cshim_FS_IOC_SETFLAGS(void);
unsigned long cshim_FS_IOC_GETVERSION(void);
unsigned long cshim_FS_IOC_FSGETXATTR(void);
unsigned long cshim_FS_IOC_FSSETXATTR(void);
unsigned long cshim_FS_IOC_FIEMAP(void);

// ---- syscalls without stable glibc wrappers -----------------------------
int cshim_memfd_create(const char *name, unsigned int flags);
int cshim_fsopen(const char *fsname, unsigned int flags);
int cshim_fsconfig(int fd, unsigned int cmd, const char *key, const void *value, int aux);
int cshim_fsmount(int fd, unsigned int flags, unsigned int attr_flags);
int cshim_fspick(int dfd, const char *path, unsigned int flags);
int cshim_open_tree(int dfd, const char *path, unsigned int flags);
int cshim_mount_setattr(int dfd, const char *path, unsigned int flags, unsigned long long attr_set,
                        unsigned long long attr_clr);
/// mount_setattr(2) changing only the propagation, to MS_PRIVATE.
int cshim_mount_set_private(int dfd, const char *path, unsigned int flags);
int cshim_move_mount(int from_dfd, const char *from_path, int to_dfd, const char *to_path, unsigned int flags);
pid_t cshim_gettid(void);
/// Name the calling thread (PR_SET_NAME, 15 bytes max).
void cshim_set_thread_name(const char *name);
/// PR_SET_DUMPABLE: 0 makes /proc/PID owned by root and refuses ptrace,
/// pidfd_getfd and /proc/PID/mem to every process without CAP_SYS_PTRACE,
/// including others running as the same uid. Returns 0 or -errno.
int cshim_set_dumpable(int dumpable);
/// PR_GET_DUMPABLE: 0, 1, 2, or -errno.
int cshim_get_dumpable(void);

// ---- SCM_RIGHTS ----------------------------------------------------------
/// sendmsg one datagram with up to 16 fds attached (tests use it to play a
/// misbehaving peer). Returns bytes or -errno.
ssize_t cshim_send_with_fds(int sock, const void *buf, size_t len, const int *fds, int nfds);

#ifdef __cplusplus
}
#endif
#endif
