// FuseKernel
