"""virtio devices over the virtio-mmio transport (virtio 1.x, MMIO version 2)."""
