// Ext4Engine
