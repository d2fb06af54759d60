"""vnet: a virtual networking stack and SDN switch daemon.

One daemon per host (``vnetd``) gives network-namespace nodes and KVM guests their
networks through a Python learning switch with 802.1Q VLANs.
"""

__version__ = "0.1.0"
