"""vnet's embedded virtual machine monitor, written on the /dev/kvm API (see docs/kvm.md)."""
