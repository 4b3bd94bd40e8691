"""XANES: edge analysis, chemical maps, energy alignment and the per-spectrum reference loop."""
