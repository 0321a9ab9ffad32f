// A minimal io_uring for the FUSE-over-io_uring transport: one ring per
// server thread, 128-byte SQEs carrying FUSE uring commands, nothing else.
// Written against the kernel ABI (linux/io_uring.h); no liburing.
#ifndef CSHIM_URING_H
#define CSHIM_URING_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cshim_uring {
    int fd;
    unsigned sq_entries;
    unsigned sq_local_tail;       // our next SQE slot (published on submit)
    unsigned *sq_head, *sq_tail, *sq_mask, *sq_array;
    unsigned *cq_head, *cq_tail, *cq_mask;
    void *cqes;                   // struct io_uring_cqe[]
    void *sqes;                   // 128-byte SQEs
    void *sq_map; size_t sq_map_len;
    void *cq_map; size_t cq_map_len;
    void *sqe_map; size_t sqe_map_len;
} cshim_uring;

/// Create a ring with 128-byte SQEs whose submissions are restricted to
/// IORING_OP_URING_CMD. It starts disabled: the thread that will use it
/// calls cshim_uring_enable (and becomes its only submitter).
/// Returns 0 or -errno; on failure nothing is left open.
int cshim_uring_open(cshim_uring *r, unsigned entries);

/// IORING_REGISTER_ENABLE_RINGS from the serving thread. 0 or -errno.
int cshim_uring_enable(cshim_uring *r);

/// Queue one FUSE uring command (REGISTER = 1, COMMIT_AND_FETCH = 2) on
/// `fuse_fd`. `iov` is the two-entry iovec array for REGISTER (NULL for
/// commits). Returns 0 or -EBUSY when the submission queue is full.
int cshim_uring_fuse_cmd(cshim_uring *r, int fuse_fd, uint32_t cmd_op, uint16_t qid,
                         uint64_t commit_id, const void *iov, uint64_t user_data);

/// Submit what is queued and wait for one completion (retrying EINTR).
/// Returns 0 with *user_data/*res filled, or -errno from io_uring_enter.
int cshim_uring_submit_wait(cshim_uring *r, uint64_t *user_data, int32_t *res);

/// Unmap and close (idempotent).
void cshim_uring_close(cshim_uring *r);

/// Pin the calling thread to one CPU. Returns 0 or -errno.
int cshim_pin_thread_to_cpu(int cpu);

#ifdef __cplusplus
}
#endif
#endif
