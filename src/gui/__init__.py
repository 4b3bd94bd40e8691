"""Graphical tools (optional extra ``[gui]``): the napari plugin for scribbles and adaptation."""
