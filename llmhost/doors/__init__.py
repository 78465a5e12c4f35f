"""Doors: one package per dialect, each translating its wire format to core types at the edge."""
