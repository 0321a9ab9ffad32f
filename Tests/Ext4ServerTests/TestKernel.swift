// The shared test kernel (Tests/FuseTestSupport), with the INIT this target uses.

import FuseKernel
import FuseTestSupport

extension TestKernel {
    /// INIT as a 7.45 kernel without iomap would send it.
    func initialize() throws -> FuseInitOut {
        try initialize(minor: 45, flags: [.asyncRead, .initExt, .maxPages, .posixACL, .exportSupport, .setxattrExt])
    }
}
