#ifndef FUSEHEADERCHECK_H
#define FUSEHEADERCHECK_H
#include <stddef.h>
/// One field of a struct in the system's <linux/fuse.h>.
typedef struct {
    const char *structName;
    const char *fieldName;
    size_t offset;
    size_t size;
} fhc_field;
/// One struct: its name and sizeof.
typedef struct {
    const char *structName;
    size_t size;
} fhc_struct;
const fhc_field *fhc_fields(size_t *count);
const fhc_struct *fhc_structs(size_t *count);
unsigned fhc_kernel_minor(void);
#endif
