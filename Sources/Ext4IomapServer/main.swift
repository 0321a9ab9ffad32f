print("ext4iomapd: not yet implemented")
