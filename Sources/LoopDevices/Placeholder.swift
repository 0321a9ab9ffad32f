// LoopDevices
