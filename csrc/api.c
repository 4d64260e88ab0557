/* fastivc — the exported surface of libfastivc.so for this stage: the
 * version.  The preload interposer (upgrade issue) adds the socket calls. */
#include "fastivc/layout.h"

#define FIVC_EXPORT __attribute__((visibility("default")))

FIVC_EXPORT const char *fastivc_version(void) { return FASTIVC_VERSION; }
FIVC_EXPORT unsigned fastivc_layout_version(void) { return FIVC_LAYOUT_VERSION; }
