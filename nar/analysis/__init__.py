"""Analyses of proto-token space; one module per question, each returning numbers (and writing plots)."""
