"""batteryct: battery-electrode nano X-ray CT (reconstruction, segmentation, XANES, 3D statistics)."""
