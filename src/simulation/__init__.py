"""Simulated electrodes: microstructure, TXM imaging, evolution series, XANES scans, sinograms."""
