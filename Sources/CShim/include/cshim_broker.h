// C helpers for the privileged side (LoopDevices, ServiceBroker): things
// Swift cannot express cleanly (struct loop_config, exact cmsg handling,
// the post-fork child path of the sandboxed spawn).
#ifndef EXT4IOMAP_CSHIM_BROKER_H
#define EXT4IOMAP_CSHIM_BROKER_H

#include <stddef.h>
#include <stdint.h>
#include <pthread.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/// LOOP_CONFIGURE on loopfd with backing fd, block size (0 = default) and lo_flags.
/// Returns 0 or -errno.
int cshim_broker_loop_configure(int loopfd, int backingfd, uint32_t block_size, uint32_t lo_flags);
/// LOOP_GET_STATUS64: backing device (kernel huge-encoded dev_t), inode, lo_flags.
int cshim_broker_loop_status(int loopfd, uint64_t *dev, uint64_t *ino, uint32_t *flags);

/// One datagram with at most one fd (SCM_RIGHTS), MSG_EOR|MSG_NOSIGNAL.
/// fd < 0 sends no control message. Returns bytes or -errno (EINTR retried).
ssize_t cshim_broker_send(int sock, const void *buf, size_t len, int fd);

/// Receive one datagram. Waits at most timeout_ms (-1 = forever) with poll.
/// Returns the full datagram length (MSG_TRUNC semantics: may exceed len) or
/// -errno (-ETIMEDOUT on timeout). Up to maxfds received fds are stored in fds
/// (close-on-exec); any more are closed and *extra_fds counts them.
/// *msg_flags gets msghdr.msg_flags (MSG_TRUNC, MSG_CTRUNC).
ssize_t cshim_broker_recv(int sock, void *buf, size_t len, int timeout_ms,
                          int *fds, int maxfds, int *nfds, int *extra_fds, int *msg_flags);

/// Spawn a sandboxed child: new mount/net/ipc/pid namespaces (ns_flags, CLONE_*),
/// a session of its own (setsid: no controlling terminal), fds 0-1 = /dev/null,
/// fd 2 = errfd (/dev/null when errfd < 0), sockfd at fd 3 (inheritable),
/// every other fd closed, / made private in the new mount namespace,
/// setgroups(0), setresgid/setresuid to gid/uid, bounding set emptied,
/// PR_SET_NO_NEW_PRIVS, then execve(path, argv, envp).
/// Returns the child pid or -errno; an exec/setup failure in the child is
/// reported back through a close-on-exec pipe and returned as -errno.
pid_t cshim_broker_spawn_sandboxed(const char *path, char *const argv[], char *const envp[],
                                   int sockfd, int errfd, uid_t uid, gid_t gid, int ns_flags);

/// Give process `pid`, which must be in a mount namespace other than ours,
/// an empty root: a short-lived child setns()es into its namespace, makes
/// every mount private, mounts a read-only tmpfs (nosuid, nodev, noexec, mode
/// 0755, root-owned) on an existing directory, chdir()s into it,
/// pivot_root(".", ".") and umount2(".", MNT_DETACH). The namespace then holds
/// that one mount, and every process of it whose root or cwd was the old root
/// has the tmpfs instead. Waits at most timeout_ms for the child (then kills
/// it), then checks /proc/PID/root and /proc/PID/cwd are on tmpfs.
/// Returns 0 or -errno: -EINVAL when pid shares our namespace, -ETIMEDOUT,
/// -EXDEV when the root did not move, -EPROTO when the child gave no report.
int cshim_broker_empty_root(pid_t pid, int timeout_ms);

/// pipe2(fds, flags). Returns 0 or -errno.
int cshim_broker_pipe2(int fds[2], int flags);

/// pthread_timedjoin_np with a relative timeout. Returns 0 or an errno
/// (ETIMEDOUT: the thread still runs and stays joinable).
int cshim_broker_timedjoin(pthread_t thread, int timeout_ms);

/// waitpid with EINTR retry; returns pid or -errno. *status gets the raw status.
pid_t cshim_broker_waitpid(pid_t pid, int *status, int options);
int cshim_broker_wifexited(int status);
int cshim_broker_wexitstatus(int status);
int cshim_broker_wifsignaled(int status);
int cshim_broker_wtermsig(int status);

/// setsockopt(SOL_SOCKET, SO_PASSRIGHTS=83, 0). Returns 0, -ENOPROTOOPT on old kernels.
int cshim_broker_drop_passrights(int sock);

/// setns(fd, CLONE_NEWNS). Returns 0 or -errno.
int cshim_broker_setns_mnt(int fd);

/// Linux constants (from the headers) that Swift's Glibc does not surface reliably.
uint32_t cshim_broker_LO_FLAGS_READ_ONLY(void);
uint32_t cshim_broker_LO_FLAGS_AUTOCLEAR(void);
uint32_t cshim_broker_LO_FLAGS_DIRECT_IO(void);
int cshim_broker_CLONE_NEWNS(void);
int cshim_broker_CLONE_NEWNET(void);
int cshim_broker_CLONE_NEWIPC(void);
int cshim_broker_CLONE_NEWPID(void);
int cshim_broker_O_PATH(void);
int cshim_broker_O_DIRECT(void);

#ifdef __cplusplus
}
#endif
#endif
