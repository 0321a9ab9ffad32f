#include "fuseheadercheck.h"
#include <linux/fuse.h>
const fhc_field *fhc_fields(size_t *count) { *count = 0; return 0; }
const fhc_struct *fhc_structs(size_t *count) { *count = 0; return 0; }
unsigned fhc_kernel_minor(void) { return FUSE_KERNEL_MINOR_VERSION; }
