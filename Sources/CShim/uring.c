#define _GNU_SOURCE
#include "cshim_uring.h"
#include <errno.h>
#include <sched.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <linux/io_uring.h>

static int sys_setup(unsigned entries, struct io_uring_params *p) {
    return (int)syscall(__NR_io_uring_setup, entries, p);
}
static int sys_enter(int fd, unsigned to_submit, unsigned min_complete, unsigned flags) {
    return (int)syscall(__NR_io_uring_enter, fd, to_submit, min_complete, flags, NULL, 0);
}
static int sys_register(int fd, unsigned op, void *arg, unsigned nr) {
    return (int)syscall(__NR_io_uring_register, fd, op, arg, nr);
}

void cshim_uring_close(cshim_uring *r) {
    if (r->sqe_map) munmap(r->sqe_map, r->sqe_map_len);
    if (r->cq_map && r->cq_map != r->sq_map) munmap(r->cq_map, r->cq_map_len);
    if (r->sq_map) munmap(r->sq_map, r->sq_map_len);
    if (r->fd >= 0) close(r->fd);
    memset(r, 0, sizeof(*r));
    r->fd = -1;
}

int cshim_uring_open(cshim_uring *r, unsigned entries) {
    memset(r, 0, sizeof(*r));
    r->fd = -1;
    struct io_uring_params p;
    memset(&p, 0, sizeof(p));
    // Deferred task work: the kernel runs the FUSE request copy when the
    // serving thread waits, instead of interrupting it. That needs a single
    // issuer, which is whoever enables the ring (cshim_uring_enable).
    p.flags = IORING_SETUP_SQE128 | IORING_SETUP_R_DISABLED | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
    int fd = sys_setup(entries, &p);
    if (fd < 0) return -errno;
    r->fd = fd;
    r->sq_entries = p.sq_entries;

    r->sq_map_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    r->cq_map_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    int single = (p.features & IORING_FEAT_SINGLE_MMAP) != 0;
    if (single && r->cq_map_len > r->sq_map_len) r->sq_map_len = r->cq_map_len;
    r->sq_map = mmap(NULL, r->sq_map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQ_RING);
    if (r->sq_map == MAP_FAILED) { int e = errno; r->sq_map = NULL; cshim_uring_close(r); return -e; }
    if (single) {
        r->cq_map = r->sq_map;
        r->cq_map_len = r->sq_map_len;
    } else {
        r->cq_map = mmap(NULL, r->cq_map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_CQ_RING);
        if (r->cq_map == MAP_FAILED) { int e = errno; r->cq_map = NULL; cshim_uring_close(r); return -e; }
    }
    r->sqe_map_len = p.sq_entries * 128;
    r->sqe_map = mmap(NULL, r->sqe_map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQES);
    if (r->sqe_map == MAP_FAILED) { int e = errno; r->sqe_map = NULL; cshim_uring_close(r); return -e; }
    r->sqes = r->sqe_map;

    char *sq = r->sq_map, *cq = r->cq_map;
    r->sq_head = (unsigned *)(sq + p.sq_off.head);
    r->sq_tail = (unsigned *)(sq + p.sq_off.tail);
    r->sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
    r->sq_array = (unsigned *)(sq + p.sq_off.array);
    r->cq_head = (unsigned *)(cq + p.cq_off.head);
    r->cq_tail = (unsigned *)(cq + p.cq_off.tail);
    r->cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
    r->cqes = cq + p.cq_off.cqes;
    r->sq_local_tail = *r->sq_tail;

    // Only FUSE uring commands may ever be submitted on this ring.
    struct io_uring_restriction res[1];
    memset(res, 0, sizeof(res));
    res[0].opcode = IORING_RESTRICTION_SQE_OP;
    res[0].sqe_op = IORING_OP_URING_CMD;
    if (sys_register(fd, IORING_REGISTER_RESTRICTIONS, res, 1) < 0) {
        int e = errno;
        cshim_uring_close(r);
        return -e;
    }
    return 0;
}

int cshim_uring_enable(cshim_uring *r) {
    return sys_register(r->fd, IORING_REGISTER_ENABLE_RINGS, NULL, 0) < 0 ? -errno : 0;
}

struct fuse_uring_cmd_req_abi {   // linux/fuse.h (7.42), in the SQE's command area
    uint64_t flags;
    uint64_t commit_id;
    uint16_t qid;
    uint8_t padding[6];
};

int cshim_uring_fuse_cmd(cshim_uring *r, int fuse_fd, uint32_t cmd_op, uint16_t qid,
                         uint64_t commit_id, const void *iov, uint64_t user_data) {
    unsigned head = __atomic_load_n(r->sq_head, __ATOMIC_ACQUIRE);
    if (r->sq_local_tail - head >= r->sq_entries) return -EBUSY;
    unsigned idx = r->sq_local_tail & *r->sq_mask;
    struct io_uring_sqe *sqe = (struct io_uring_sqe *)((char *)r->sqes + (size_t)idx * 128);
    memset(sqe, 0, 128);
    sqe->opcode = IORING_OP_URING_CMD;
    sqe->fd = fuse_fd;
    sqe->cmd_op = cmd_op;
    if (iov) {
        sqe->addr = (uint64_t)(uintptr_t)iov;
        sqe->len = 2;
    }
    sqe->user_data = user_data;
    struct fuse_uring_cmd_req_abi req;
    memset(&req, 0, sizeof(req));
    req.commit_id = commit_id;
    req.qid = qid;
    memcpy(sqe->cmd, &req, sizeof(req));
    r->sq_array[idx] = idx;
    r->sq_local_tail++;
    return 0;
}

int cshim_uring_submit_wait(cshim_uring *r, uint64_t *user_data, int32_t *res) {
    __atomic_store_n(r->sq_tail, r->sq_local_tail, __ATOMIC_RELEASE);
    for (;;) {
        unsigned head = *r->cq_head;
        int ready = head != __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE);
        unsigned pending = r->sq_local_tail - __atomic_load_n(r->sq_head, __ATOMIC_ACQUIRE);
        if (ready && pending == 0) {
            struct io_uring_cqe *cqe = (struct io_uring_cqe *)r->cqes + (head & *r->cq_mask);
            *user_data = cqe->user_data;
            *res = cqe->res;
            __atomic_store_n(r->cq_head, head + 1, __ATOMIC_RELEASE);
            return 0;
        }
        // One call submits what is queued and sleeps until a completion.
        int n = sys_enter(r->fd, pending, ready ? 0 : 1, IORING_ENTER_GETEVENTS);
        if (n < 0 && errno != EINTR && errno != EAGAIN && errno != EBUSY) return -errno;
    }
}

int cshim_pin_thread_to_cpu(int cpu) {
    if (cpu < 0 || cpu >= CPU_SETSIZE) return -EINVAL;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return sched_setaffinity(0, sizeof(set), &set) == 0 ? 0 : -errno;
}
