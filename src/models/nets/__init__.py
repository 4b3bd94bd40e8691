"""Pure-torch networks: LRCS-Net, U-Net, learned reconstruction and XANES nets."""
